"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError


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


def add_training_args(p: argparse.ArgumentParser) -> None:
    """``--resume``, ``--max-steps`` and ``--no-progress`` of the commands that train in a run folder."""
    p.add_argument("--resume", action="store_true", help="continue the run in out=... from its last checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (the schedule is unchanged)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    for name in ("arch_json", "family", "arch"):
        if getattr(args, name, None):
            return str(getattr(args, name))
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
