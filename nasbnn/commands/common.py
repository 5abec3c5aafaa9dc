"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import NasbnnError


def add_config_args(p: argparse.ArgumentParser, *, default_config: str | None = None) -> None:
    p.add_argument("--config", default=default_config, metavar="FILE",
                   help="YAML config (see configs/); default: %(default)s")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=2")


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
        raise NasbnnError("no architecture given; use --arch, --largest, --smallest or --upstream-arch")
    targets = resolve_archs(space, spec)
    if len(targets) != 1:
        raise NasbnnError(f"{spec!r} names {len(targets)} architectures; give one (pareto.json@BUCKET)")
    return targets[0][1]


def space_override(args: argparse.Namespace) -> str | None:
    """The ``space.name`` the command line asked for explicitly (a checkpoint of another space is refused)."""
    from ..runs import explicit_override

    return explicit_override(getattr(args, "overrides", None), "space.name")


def print_json(obj: object) -> None:
    """Prints ``obj`` as indented JSON on standard output (the ``--json`` output of the commands)."""
    print(json.dumps(obj, indent=2, sort_keys=False))
