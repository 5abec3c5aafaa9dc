"""Numerics policy: float32 by default (the paper's protocol), bf16 only when chosen, and every
evaluation (search fitness included) in float32 whatever the training passes use."""

from __future__ import annotations

import json

import helpers
import pytest
import torch

from nasbnn.config import RunConfig, TrainConfig, load_config
from nasbnn.errors import ConfigError
from nasbnn.utils.device import autocast, uses_bf16

TINY = [*helpers.TINY, "data.holdout_per_class=16", "data.synthetic.num_train=240", "data.synthetic.num_test=32",
        "train.epochs=1", "train.eval_images=32"]
SEARCH = [*helpers.TINY_SEARCH, "search.population=10", "search.generations=1", "search.num_mutations=4",
          "search.num_crossovers=4"]


def test_amp_defaults_to_float32_and_parses_off_and_fp32():
    assert TrainConfig().amp == "off"
    assert load_config(RunConfig, "imagenet", []).train.amp == "off"
    assert load_config(RunConfig, "configs/imagenet.yaml", []).train.amp == "off"
    for text, mode in (("off", "off"), ("fp32", "off"), ("bf16", "bf16"), ("auto", "auto")):
        assert load_config(RunConfig, None, [f"train.amp={text}"]).train.amp == mode  # bare off is YAML false
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config(RunConfig, None, ["train.amp=fp16"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [uses_bf16(cpu, m) for m in ("off", "auto", "bf16")] == [False, False, True]
    assert [uses_bf16(cuda, m) for m in ("off", "auto", "bf16")] == [False, True, True]


def _losses(space, amp: str, steps: int = 3) -> list[float]:
    from nasbnn.models import SuperBNN
    from nasbnn.train.optim import build_optimizer, build_scheduler
    from nasbnn.train.sampler import SandwichSampler
    from nasbnn.train.supernet import SupernetTrainer

    model = SuperBNN(space, seed=0)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    trainer = SupernetTrainer(model, TrainConfig(), SandwichSampler(space, seed=0), opt,
                              build_scheduler(opt, total_steps=steps), autocast=autocast(torch.device("cpu"), amp))
    g = torch.Generator().manual_seed(0)
    out = []
    for step in range(steps):
        x = torch.randn(16, space.in_channels, space.resolution, space.resolution, generator=g)
        y = torch.randint(0, space.num_classes, (16,), generator=g)
        out.append(float(trainer.step(x, y, step)["loss"]))
    return out


def test_bf16_is_honoured_on_cpu_and_stays_close_to_float32(tiny_space):
    fp32, auto, bf16 = (_losses(tiny_space, m) for m in ("off", "auto", "bf16"))
    assert auto == fp32  # auto is float32 on CPU
    assert bf16 != fp32
    assert all(abs(a - b) / a < 0.1 for a, b in zip(bf16, fp32)), (bf16, fp32)


def test_search_fitness_is_float32_whatever_train_amp(tmp_path):
    """train.amp=bf16 changes the training passes only; the search scores as export and eval do."""
    from nasbnn.runs import load_supernet
    from nasbnn.search.evaluator import SupernetEvaluator
    from nasbnn.search.run import run_search
    from nasbnn.space import Arch
    from nasbnn.train.supernet import train_supernet

    sup = tmp_path / "sup"
    train_supernet(load_config(RunConfig, None, [*TINY, f"out={sup}"]), progress=False)
    ck = sup / "checkpoint.pt"
    hist = {}
    for amp in ("bf16", "off"):
        cfg = load_config(RunConfig, None, [*TINY, *SEARCH, f"train.amp={amp}", f"out={tmp_path / amp}"])
        run_search(cfg, checkpoint=ck, progress=False)
        lines = (tmp_path / amp / "search" / "history.jsonl").read_text().splitlines()
        hist[amp] = [json.loads(line) for line in lines]
    assert hist["bf16"] == hist["off"]
    # and the check can fail: bf16 scoring of the same candidates on the same batches moves the scores
    model, _ = load_supernet(ck)
    run = hist["off"]
    fp32 = SupernetEvaluator(model, _calib(model), _val(model))
    bf16 = SupernetEvaluator(model, _calib(model), _val(model), autocast=autocast(torch.device("cpu"), "bf16"))
    archs = [Arch.parse(c["arch"]) for c in run]
    assert fp32(archs) != bf16(archs)


def _calib(model) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    s = model.space
    return [torch.randn(32, s.in_channels, s.resolution, s.resolution, generator=g) for _ in range(2)]


def _val(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    s = model.space
    return [(torch.randn(64, s.in_channels, s.resolution, s.resolution, generator=g),
             torch.randint(0, s.num_classes, (64,), generator=g)) for _ in range(2)]
