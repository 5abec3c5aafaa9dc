"""Official-format NAS-BNN artifacts built from the parity fixture's state (no 254 MB download).

``checkpoint.pth.tar`` is what upstream's train.py saves (``epoch``, ``arch``, ``state_dict`` with the
DDP ``module.`` prefix, ``optimizer``, ``scheduler``); ``info.pth.tar`` is what search.py saves
(``memory``, ``candidates``, ``vis_dict`` keyed by 132-integer tuples, ``epoch``, ``pareto_global``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("NASBNN_UPSTREAM_FIXTURES", REPO.parent / "shared" / "fixtures" / "upstream"))
HAVE_FIXTURES = (FIXTURES / "make_state.py").is_file()


def fixture_state(seed: int = 0) -> dict[str, torch.Tensor]:
    spec = importlib.util.spec_from_file_location("nasbnn_test_make_state", FIXTURES / "make_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_state(json.loads((FIXTURES / "state_keys.json").read_text()), seed)


def write_official_checkpoint(path: Path, seed: int = 0) -> Path:
    from nasbnn.presets import create_space
    from nasbnn.upstream import arch_to_upstream

    space = create_space("imagenet")
    state = {f"module.{k}": v for k, v in fixture_state(seed).items()}
    for name, arch in (("biggest_cand", space.largest()), ("smallest_cand", space.smallest())):
        state[f"module.{name}"] = torch.tensor(arch_to_upstream(arch, space)).view(-1, 6)
    torch.save({"epoch": 512, "arch": "superbnn", "state_dict": state, "optimizer": {}, "scheduler": {}}, path)
    return path


def write_official_search(path: Path, members: dict[int, tuple[int, ...]], accs: dict[int, float],
                          ops: dict[int, float]) -> Path:
    """``pareto_global`` = ``members`` (bucket -> tuple), with ``vis_dict`` entries as upstream records them."""
    vis = {t: {"ops": ops[b], "acc": accs[b], "visited": True} for b, t in members.items()}
    tuples = list(members.values())
    info = {"memory": [tuples[: len(tuples) // 2]], "candidates": tuples[len(tuples) // 2:], "vis_dict": vis,
            "epoch": 20, "pareto_global": dict(members)}
    torch.save(info, path)
    return path


def logits_cases() -> tuple[np.ndarray, list[dict]]:
    data = json.loads((FIXTURES / "logits_seed0.json").read_text())
    return np.load(FIXTURES / data["input"]), data["cases"]


def ops_by_arch() -> dict[tuple[int, ...], dict]:
    return {tuple(e["arch"]): e for e in json.loads((FIXTURES / "ops_seed0.json").read_text())}


def make_imagenet_folder(root: Path, *, classes: int, train_per_class: int, val_per_class: int, size=(20, 16),
                         seed: int = 0) -> Path:
    """An ImageNet-layout JPEG folder: ``train/<wnid>/<wnid>_<i>.JPEG`` and ``val/<wnid>/...``."""
    rs = np.random.RandomState(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            wnid = f"n{c:08d}"
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = rs.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)
                px[..., c % 3] = 60 + (40 * c) % 190  # a class-dependent channel, so there is something to learn
                Image.fromarray(px).save(folder / f"{wnid}_{split}_{i}.JPEG", quality=90)
    return root


def make_official_split(split_dir: Path, root: Path, *, per_class: int, seed: int = 0) -> Path:
    """What upstream's split_imagenet.py leaves: relative links (dangling from where they sit) in
    ``train/<class>/``, ``per_class`` of them moved to ``val/<class>/``."""
    rs = np.random.RandomState(seed)
    for cls in sorted(os.listdir(root / "train")):
        names = sorted(os.listdir(root / "train" / cls))
        held = set(rs.choice(len(names), per_class, replace=False).tolist())
        for i, name in enumerate(names):
            part = "val" if i in held else "train"
            (split_dir / part / cls).mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.join("./data/ImageNet/train", cls, name), split_dir / part / cls / name)
    return split_dir
