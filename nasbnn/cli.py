"""The ``nasbnn`` command line: each subcommand turns arguments into one library call.

User mistakes (bad architecture, unknown key, missing file...) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
from .errors import NasbnnError
from .utils.io import remove_empty_created

__all__ = ["main"]

#: Distributions that a runtime-only install (``pip install nasbnn``) lacks: ``pip install 'nasbnn[train]'``.
_TRAINING_MODULES = frozenset({"torch", "pydantic", "omegaconf", "tqdm", "tensorboard", "matplotlib"})

# Subcommands contributed by other modules: each module exposes ``register(subparsers)``.
_COMMAND_MODULES = (
    "nasbnn.commands.core",
    "nasbnn.commands.train",
    "nasbnn.commands.train_arch",
    "nasbnn.commands.search",
    "nasbnn.commands.deploy",
    "nasbnn.commands.pipeline",
    "nasbnn.commands.infer",
    "nasbnn.commands.upstream",
    "nasbnn.commands.engine",
    "nasbnn.commands.detect",
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors take one line, like every other error of the commands
    (argparse prints the whole usage first); the subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="nasbnn",
        description="Neural architecture search for binary neural networks (NAS-BNN).",
    )
    parser.add_argument("--version", action="version", version=f"nasbnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # an optional part that is not installed in this tree
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasbnn`` console script; returns the exit status."""
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun only rank 0 reports; the others stay quiet (errors still reach stderr).
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    parser = build_parser()
    # ``key=value`` overrides may come anywhere, also after options (argparse alone would refuse them).
    args, unknown = parser.parse_known_args(argv)
    stray = [u for u in unknown if u.startswith("-") or "=" not in u]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*(args.overrides or []), *unknown]
    handler: Callable[[argparse.Namespace], int | None] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # here, where a closed or full output can still be reported
        return code
    except BrokenPipeError:
        # The reader of the output went away (``| head``): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except NasbnnError as exc:
        print(f"nasbnn {args.command}: error: {exc}", file=sys.stderr)
        remove_empty_created()  # no empty run folder left behind by a command that wrote nothing
        return 2
    except KeyboardInterrupt:
        print(f"nasbnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system's word on a path (name too long, disk full, ...): one line
        where = f": {exc.filename!r}" if exc.filename else ""
        print(f"nasbnn {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        remove_empty_created()
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _TRAINING_MODULES:
            raise
        print(f"nasbnn {args.command}: error: this command needs the training stack ({exc.name} is not installed); "
              "install it with: pip install 'nasbnn[train]'", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leaves the process group before the interpreter exits: letting gloo's threads
    die with the process can abort it ("terminate called without an active exception")."""
    if sys.modules.get("torch") is None:  # never imported (or blocked): no process group to leave
        return
    from .train.distributed import teardown

    teardown()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
