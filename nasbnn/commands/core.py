"""``nasbnn spaces``, ``nasbnn cost`` and ``nasbnn config``."""

from __future__ import annotations

import argparse

from .common import add_arch_args, add_config_args, resolve_arch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spaces", help="list the registered search-space presets")
    p.add_argument("--json", action="store_true", help="print the full definitions as JSON")
    p.set_defaults(handler=_spaces)

    p = sub.add_parser("cost", help="FLOPs, BOPs and OPs of an architecture, per layer and in total")
    p.add_argument("--space", default="imagenet", help="preset name or space file (default: %(default)s)")
    add_arch_args(p)
    p.add_argument("--resolution", type=int, default=None, help="input resolution (default: the space's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--convention", choices=("upstream", "standard"), default="upstream",
                   help="how the 8-bit stem is counted (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(handler=_cost)

    p = sub.add_parser("config", help="print the resolved configuration (file + overrides)")
    add_config_args(p)
    p.set_defaults(handler=_config)

    register_parity(sub)


def _spaces(args: argparse.Namespace) -> int:
    from ..cost import arch_cost
    from ..presets import create_space, list_spaces
    from ..utils.table import format_table
    from .common import print_json

    if args.json:
        print_json({n: create_space(n).to_dict() for n in list_spaces()})
        return 0
    rows = []
    for name in list_spaces():
        s = create_space(name)
        rows.append([name, s.resolution, s.in_channels, s.num_classes, len(s.stages),
                     arch_cost(s.smallest(), s).mops, arch_cost(s.largest(), s).mops])
    print(format_table(["space", "resolution", "in_ch", "classes", "stages", "min MOPs", "max MOPs"], rows))
    return 0


def cost_table(arch, space, resolution=None, convention="upstream") -> str:  # type: ignore[no-untyped-def]
    """The per-layer cost table of ``arch`` followed by its totals."""
    from ..cost import arch_cost, layer_costs
    from ..utils.table import format_table

    rows = []
    for lc in layer_costs(arch, space, resolution, convention):
        rows.append([lc.name, lc.kind, f"{lc.in_channels}->{lc.out_channels}", lc.kernel_size, lc.groups,
                     lc.stride, lc.out_resolution, lc.cost.mflops, lc.cost.mbops, lc.cost.mops])
    total = arch_cost(arch, space, resolution, convention)
    rows.append(["total", "", "", "", "", "", "", total.mflops, total.mbops, total.mops])
    return format_table(
        ["layer", "kind", "channels", "k", "groups", "stride", "out_res", "MFLOPs", "MBOPs", "MOPs"],
        rows, align="lllrrrrrrr",
    )


def _cost(args: argparse.Namespace) -> int:
    from ..cost import arch_cost, layer_costs
    from ..presets import resolve_space
    from .common import print_json

    space = resolve_space(args.space, num_classes=args.num_classes, resolution=args.resolution)
    arch = resolve_arch(args, space)
    if args.json:
        total = arch_cost(arch, space, None, args.convention)
        print_json({
            "space": space.name, "arch": str(arch), "resolution": space.resolution,
            "convention": args.convention, **total.to_dict(),
            "layers": [{"name": lc.name, "kind": lc.kind, **lc.cost.to_dict()}
                       for lc in layer_costs(arch, space, None, args.convention)],
        })
        return 0
    print(f"space {space.name!r}, resolution {space.resolution}, OPs = FLOPs + BOPs/64, "
          f"stem convention: {args.convention}")
    print(f"arch {arch}")
    print(cost_table(arch, space, None, args.convention))
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from ..config import RunConfig, config_to_dict, load_config

    cfg = load_config(RunConfig, args.config, args.overrides)
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
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ..errors import NasbnnError
    from ..utils.table import format_table

    folder = Path(args.fixtures or os.environ.get("NASBNN_UPSTREAM_FIXTURES", "../shared/fixtures/upstream"))
    if not (folder / "make_state.py").is_file():
        raise NasbnnError(f"{str(folder)!r} is not a parity fixture folder (no make_state.py)")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=args.isa)
    code = ("import json,sys; from nasbnn.parity import check_logits, check_ops; "
            "print(json.dumps({'logits': check_logits(sys.argv[1]), 'ops': check_ops(sys.argv[1])}))")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NasbnnError(f"parity check failed to run: {proc.stderr.strip().splitlines()[-1]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = all(r["rel_l2"] <= args.tolerance for r in res["logits"]) and all(r["rel_err"] <= 1e-6 for r in res["ops"])
    if args.json:
        print(json.dumps({**res, "ok": ok}, indent=2))
    else:
        rows = [[r["file"], r["case"], r["weights"], r["rel_l2"]] for r in res["logits"]]
        print(format_table(["file", "case", "weights", "rel L2"], rows))
        worst = max((r["rel_err"] for r in res["ops"]), default=0.0)
        print(f"OPs: {len(res['ops'])} architectures, worst relative error {worst:.2e}")
        print("parity: OK" if ok else "parity: FAILED")
    return 0 if ok else 1
