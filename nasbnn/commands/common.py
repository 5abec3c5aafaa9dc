"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputError
from ..utils.io import check_replaceable, missing_file


def add_config_args(p: argparse.ArgumentParser, *, default_config: str | None = None) -> None:
    p.add_argument("--config", default=default_config, metavar="FILE",
                   help="YAML config (see configs/); default: %(default)s")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=2")


def config_parser(sub: argparse._SubParsersAction, name: str, *, help: str, description: str | None = None,
                  default_config: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that reads a run config (``--config`` and ``KEY=VALUE`` overrides)."""
    p = sub.add_parser(name, help=help, description=description)
    add_config_args(p, default_config=default_config)
    return p


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``: the trained supernet a command starts from (by default the config's run folder)."""
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="supernet checkpoint or run folder (default: <out>/checkpoint.pt)")


def add_training_args(p: argparse.ArgumentParser, *, folder: str = "out=...") -> None:
    """``--resume``, ``--force``, ``--max-steps`` and ``--no-progress`` of the commands that train in a run
    folder (``folder`` names it in the help)."""
    p.add_argument("--resume", action="store_true", help=f"continue the run in {folder} from its last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="start over, replacing the run's checkpoint (without it, a run folder that holds one is "
                        "refused)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after this step, at least 1 (the schedule is unchanged)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_training_args(args: argparse.Namespace) -> None:
    """Refuses a ``--max-steps`` below 1 and ``--resume`` with ``--force`` (ConfigError)."""
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.resume and args.force:
        raise ConfigError("--resume continues the run and --force starts it over; give one of them")


def check_output_file(path: str | Path, *, option: str, inputs: Iterable[str | Path | None] = (),
                      bundles: Iterable[str | Path | None] = (), bundle_files: Iterable[str] = ()) -> Path:
    """Refuses, before any work, an output file that would replace one of the command's ``inputs`` or one of
    the ``bundle_files`` of an input bundle folder, that is a folder, or whose folder cannot be created
    (OutputError naming ``option``). Returns ``path``."""
    out = Path(path)
    target = out.resolve()
    bundle_files = set(bundle_files)
    for item in inputs:
        if item is not None and Path(item).resolve() == target:
            raise OutputError(f"{option} {str(out)!r} is one of this command's inputs; choose another file")
    for folder in bundles:
        if folder is None:
            continue
        if target.parent == Path(folder).resolve() and target.name in bundle_files:
            raise OutputError(f"{option} {str(out)!r} would replace {target.name} of the input bundle "
                              f"{str(folder)!r}; choose another file")
    if out.is_dir():
        raise OutputError(f"{option} {str(out)!r} is a folder, not a file")
    try:
        check_replaceable(out)
    except OutputError as exc:
        raise OutputError(f"{option}: {exc}") from None
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {str(out)!r} cannot be written: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {str(out)!r} cannot be written: {str(parent)!r} is not writable")
            try:  # what the file system says (read-only, /proc, ...), which os.access does not know as root
                tempfile.TemporaryFile(dir=parent).close()
            except OSError as exc:
                raise OutputError(f"{option} {str(out)!r} cannot be written in {str(parent)!r}: "
                                  f"{exc.strerror or exc}") from None
            break
    return out


def distinct_outputs(*named: tuple[str, str | Path | None]) -> None:
    """Refuses two options that name the same output file (OutputError)."""
    seen: dict[Path, str] = {}
    for option, path in named:
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise OutputError(f"{seen[key]} and {option} name the same file {str(path)!r}; give two different files")
        seen[key] = option


def add_cost_output_args(p: argparse.ArgumentParser) -> None:
    """``--convention`` of the stem count and ``--json`` of the commands that print a cost table."""
    p.add_argument("--convention", choices=("upstream", "standard"), default="upstream",
                   help="how the 8-bit stem is counted (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def add_arch_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--arch", metavar="STR", help="architecture string, e.g. 'c24k3g1.1|c48k3g1.1,...'")
    g.add_argument("--largest", action="store_true", help="the space's largest member")
    g.add_argument("--smallest", action="store_true", help="the space's smallest member")
    g.add_argument("--upstream-arch", metavar="INTS", help="upstream candidate: comma-separated integers")
    g.add_argument("--arch-json", metavar="FILE", help="a JSON file with an architecture dict")


def arch_spec(args: argparse.Namespace) -> str | None:
    """The architecture spec (see :func:`nasbnn.runs.resolve_archs`) that the options of a command name."""
    if getattr(args, "largest", False):
        return "largest"
    if getattr(args, "smallest", False):
        return "smallest"
    if getattr(args, "upstream_arch", None):
        return f"upstream:{args.upstream_arch}"
    for name in ("arch_json", "family"):  # files: never read as an architecture string
        value = getattr(args, name, None)
        if value:
            path = str(value).rpartition("@")[0] if name == "family" and "@" in str(value) else str(value)
            if not Path(path).is_file() and not (name == "family" and Path(path).is_dir()):
                raise ConfigError(f"--{name.replace('_', '-')}: {missing_file(path, '')}")
            return str(value)
    if getattr(args, "arch", None):
        return str(args.arch)
    return None


def resolve_arch(args: argparse.Namespace, space: Any) -> Any:
    """The one architecture selected by :func:`add_arch_args` options, validated against ``space``."""
    from ..runs import resolve_archs

    spec = arch_spec(args)
    if spec is None:
        raise ConfigError("no architecture given; use --arch, --largest, --smallest or --upstream-arch")
    targets = resolve_archs(space, spec)
    if len(targets) != 1:
        raise ConfigError(f"{spec!r} names {len(targets)} architectures; give one (pareto.json@BUCKET)")
    return targets[0][1]


def space_override(args: argparse.Namespace) -> str | None:
    """The ``space.name`` the command line asked for explicitly (a checkpoint of another space is refused)."""
    from ..runs import explicit_override

    return explicit_override(getattr(args, "overrides", None), "space.name")


def print_json(obj: object) -> None:
    """Prints ``obj`` as indented JSON on standard output (the ``--json`` output of the commands)."""
    print(json.dumps(obj, indent=2, sort_keys=False))


def print_report(report: Any, *, as_json: bool, text: Callable[[Any], str]) -> None:
    """Prints a command's result: as JSON with ``--json``, else as the text ``text`` renders of it."""
    if as_json:
        print_json(report)
    else:
        print(text(report))
