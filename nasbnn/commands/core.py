"""``nasbnn spaces``, ``nasbnn cost`` and ``nasbnn config``."""

from __future__ import annotations

import argparse

from .common import add_arch_args, add_config_args, add_cost_output_args, print_json, print_report, resolve_arch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spaces", help="list the registered search-space presets")
    p.add_argument("--json", action="store_true", help="print the full definitions as JSON")
    p.set_defaults(handler=_spaces)

    p = sub.add_parser("cost", help="FLOPs, BOPs and OPs of an architecture, per layer and in total")
    p.add_argument("--space", default="imagenet", help="preset name or space file (default: %(default)s)")
    add_arch_args(p)
    p.add_argument("--resolution", type=int, default=None, help="input resolution (default: the space's)")
    p.add_argument("--num-classes", type=int, default=None)
    add_cost_output_args(p)
    p.set_defaults(handler=_cost)

    p = sub.add_parser("config", help="print the resolved configuration (file + overrides)")
    add_config_args(p)
    p.set_defaults(handler=_config)

    register_parity(sub)


def _spaces(args: argparse.Namespace) -> int:
    from ..cost_tables import spaces_table
    from ..presets import create_space, list_spaces

    if args.json:
        print_json({n: create_space(n).to_dict() for n in list_spaces()})
    else:
        print(spaces_table())
    return 0


def _cost(args: argparse.Namespace) -> int:
    from ..cost_tables import cost_report, cost_text
    from ..presets import resolve_space

    space = resolve_space(args.space, num_classes=args.num_classes, resolution=args.resolution)
    arch = resolve_arch(args, space)
    if args.json:
        print_json(cost_report(arch, space, args.convention))
    else:
        print(cost_text(arch, space, args.convention))
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from ..config import RunConfig, config_to_dict, load_config
    from ..context import base_space

    cfg = load_config(RunConfig, args.config, args.overrides)
    base_space(cfg)  # a space name or file that does not resolve is an error here too, not at training time
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def register_parity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="compare logits and OPs with the official code's parity fixtures")
    p.add_argument("--fixtures", default=None, metavar="DIR",
                   help="fixture folder (default: $NASBNN_UPSTREAM_FIXTURES or ../shared/fixtures/upstream)")
    p.add_argument("--isa", default="AVX2", help="oneDNN ISA the fixtures were made with (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_parity)


def _parity(args: argparse.Namespace) -> int:
    from ..parity import format_parity, run_parity

    res = run_parity(args.fixtures, isa=args.isa, tolerance=args.tolerance)
    print_report(res, as_json=args.json, text=format_parity)
    return 0 if res["ok"] else 1
