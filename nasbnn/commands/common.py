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


def resolve_arch(args: argparse.Namespace, space: Any) -> Any:
    """The architecture selected by :func:`add_arch_args` options, validated against ``space``."""
    import json
    from pathlib import Path

    from ..space import Arch
    from ..upstream import arch_from_upstream, parse_upstream_ints

    if getattr(args, "largest", False):
        return space.largest()
    if getattr(args, "smallest", False):
        return space.smallest()
    if getattr(args, "upstream_arch", None):
        return arch_from_upstream(parse_upstream_ints(args.upstream_arch), space, nondecreasing=False)
    if getattr(args, "arch_json", None):
        p = Path(args.arch_json)
        if not p.is_file():
            raise NasbnnError(f"architecture file {str(p)!r} does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise NasbnnError(f"{str(p)!r} is not valid JSON: {exc}") from None
        return space.validate(Arch.from_dict(data.get("arch", data) if isinstance(data, dict) else data))
    if getattr(args, "arch", None):
        return space.parse(args.arch)
    raise NasbnnError("no architecture given; use --arch, --largest, --smallest or --upstream-arch")


def print_json(obj: object) -> None:
    """Prints ``obj`` as indented JSON on standard output (the ``--json`` output of the commands)."""
    print(json.dumps(obj, indent=2, sort_keys=False))
