"""What only a CUDA device exercises: bf16 and float32 training steps, channels-last, the Triton-compiled
block tails, NCCL collectives and pinned-memory loading.

Marked ``gpu`` (deselected by default; ``pytest -m gpu``) and skipped without CUDA.
``NASBNN_GPU_TEST_DEVICE=cpu`` runs the device-independent parts on the CPU (gloo instead of NCCL) to
check the tests themselves on a machine without a GPU.

Binary networks turn rounding differences (another summation order, another memory layout) into
sign flips, each of which moves one sample's logits by a few per cent. Whole-network comparisons
therefore ask that almost every sample agrees tightly; element-wise kernels are compared directly.
"""

from __future__ import annotations

import os
import random
import socket

import pytest
import torch

from nasbnn.config import TrainConfig
from nasbnn.models import SuperBNN
from nasbnn.models.blocks import set_fused
from nasbnn.presets import create_space
from nasbnn.train.optim import build_optimizer, build_scheduler
from nasbnn.train.sampler import SandwichSampler
from nasbnn.train.supernet import SupernetTrainer
from nasbnn.utils.device import autocast, configure_backends

DEVICE = torch.device(os.environ.get("NASBNN_GPU_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _batches(space, n: int, batch: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, space.in_channels, space.resolution, space.resolution, generator=g).to(DEVICE),
             torch.randint(0, space.num_classes, (batch,), generator=g).to(DEVICE)) for _ in range(n)]


def _train(space, amp: str, steps: int, *, channels_last: bool = False, fused: str | None = None,
           dist=None) -> tuple[list[float], SuperBNN]:  # type: ignore[no-untyped-def]
    configure_backends(DEVICE, amp)
    model = SuperBNN(space, seed=0).to(DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fused:
        set_fused(model, fused)
    cfg = TrainConfig()
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    trainer = SupernetTrainer(model, cfg, SandwichSampler(space, seed=0), opt, build_scheduler(opt, total_steps=10),
                              dist=dist, autocast=autocast(DEVICE, amp))
    losses = []
    for step, (x, y) in enumerate(_batches(space, steps)):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses.append(float(trainer.step(x, y, step)["loss"]))
    return losses, model


def _mostly_equal(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4, share: float = 0.9) -> float:
    """Share of samples whose logits agree to ``tol`` relative L2 (the rest: sign flips)."""
    err = (a.float() - b.float()).norm(dim=1) / b.float().norm(dim=1).clamp_min(1e-30)
    frac = float((err <= tol).float().mean())
    assert frac >= share, (frac, err.tolist())
    return frac


def test_bf16_and_fp32_training_steps_are_finite_and_close():
    space = create_space("fashion-mnist")
    fp32, _ = _train(space, "off", 3)
    bf16, _ = _train(space, "bf16", 3)
    assert all(torch.isfinite(torch.tensor(fp32 + bf16)))
    assert bf16 != fp32  # bf16 really ran
    for a, b in zip(fp32, bf16):
        assert abs(a - b) / a < 0.05, (fp32, bf16)


def test_channels_last_matches_contiguous():
    configure_backends(DEVICE, "off")
    space = create_space("fashion-mnist")
    model = SuperBNN(space, seed=0).to(DEVICE).eval()
    (x, _), = _batches(space, 1, batch=64)
    rng = random.Random(0)
    for arch in (space.largest(), space.smallest(), space.sample(rng)):
        model.set_arch(arch)
        with torch.no_grad():
            model.to(memory_format=torch.contiguous_format)
            want = model(x)
            model.to(memory_format=torch.channels_last)
            got = model(x.contiguous(memory_format=torch.channels_last))
        _mostly_equal(got, want)
    # and a training step in each layout
    contiguous, _ = _train(space, "off", 2)
    cl, _ = _train(space, "off", 2, channels_last=True)
    for a, b in zip(contiguous, cl):
        assert abs(a - b) <= 1e-3 * abs(a), (contiguous, cl)


def test_compiled_tail_matches_eager_to_1e5():
    from nasbnn.ops import fused

    reason = fused.compiled_tail_works(DEVICE)
    assert reason is None, reason
    g = torch.Generator().manual_seed(0)

    def args(training: bool, with_sign: bool):  # type: ignore[no-untyped-def]
        c = 48
        y, res = (torch.randn(8, c, 14, 14, generator=g).to(DEVICE) for _ in range(2))
        w, b = (1 + 0.1 * torch.randn(c, generator=g)).to(DEVICE), (0.1 * torch.randn(c, generator=g)).to(DEVICE)
        w.requires_grad_(True)
        y.requires_grad_(True)
        shifts = [(0.1 * torch.randn(1, c, 1, 1, generator=g)).to(DEVICE) for _ in range(3)]
        slope = (0.25 + 0.05 * torch.randn(c, generator=g)).to(DEVICE)
        return [y, res, w, b, torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE), training, 0.1, 1e-5,
                shifts[0], slope, shifts[1], shifts[2] if with_sign else None]

    compiled = fused._compiled_tail()
    for training in (True, False):
        for with_sign in (True, False):
            a = args(training, with_sign)
            b = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in a]
            out_e, sign_e = fused.tail_impl(*a)
            out_c, sign_c = compiled(*b)
            assert float((out_c - out_e).detach().abs().max()) <= 1e-5 * max(1.0, float(out_e.detach().abs().max()))
            assert torch.allclose(b[4], a[4], atol=1e-5) and torch.allclose(b[5], a[5], atol=1e-5)  # running stats
            if with_sign:
                assert float((sign_c != sign_e).float().mean()) <= 1e-4
            out_e.square().sum().backward()
            out_c.square().sum().backward()
            for i in (0, 2):
                scale = max(1.0, float(a[i].grad.abs().max()))
                assert float((b[i].grad - a[i].grad).abs().max()) <= 1e-5 * scale, i


@torch.no_grad()
def test_compiled_network_matches_eager_network():
    space = create_space("fashion-mnist")
    eager = SuperBNN(space, seed=0).to(DEVICE).eval()
    comp = set_fused(SuperBNN(space, seed=0).to(DEVICE).eval(), "compiled")
    (x, _), = _batches(space, 1, batch=64)
    for arch in (space.largest(), space.smallest()):
        eager.set_arch(arch)
        comp.set_arch(arch)
        _mostly_equal(comp(x), eager(x), tol=1e-5)


class _OneRank:
    """Rank information that runs the collectives with one rank (a real process group of size 1)."""

    rank, world_size, local_rank, is_main, enabled = 0, 1, 0, True, True


def test_one_rank_nccl_step():
    import torch.distributed as dist

    from nasbnn.train.distributed import all_reduce_sum, average_buffers

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if ON_CUDA else "gloo"
    if ON_CUDA:
        torch.cuda.set_device(DEVICE)
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        space = create_space("tiny")
        torch.backends.cudnn.deterministic = True
        alone, m_alone = _train(space, "off", 2)
        synced, m_synced = _train(space, "off", 2, dist=_OneRank())
        torch.backends.cudnn.deterministic = False
        assert alone == pytest.approx(synced, rel=1e-5)
        for (n, a), b in zip(m_alone.named_parameters(), m_synced.parameters()):
            assert (a.grad is None) == (b.grad is None), n  # unused parameters keep no gradient
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), n
        average_buffers(m_synced, _OneRank())  # type: ignore[arg-type]
        v = all_reduce_sum(torch.tensor([1.0, 2.0], device=DEVICE), _OneRank())  # type: ignore[arg-type]
        assert v.tolist() == [1.0, 2.0]
        assert any(p.grad is None for p in m_synced.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not ON_CUDA, reason="pinned memory needs CUDA")
def test_pinned_memory_loader_delivers_the_cpu_batches(tmp_path):
    import numpy as np
    from PIL import Image

    from nasbnn.config import DataConfig
    from nasbnn.data import build_data
    from nasbnn.data.base import move_to_device

    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(move_to_device(x, DEVICE).cpu(), x)
    rs = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(12 if split == "train" else 4):
                pixels = rs.randint(0, 256, (40, 48, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.jpg")
    data = build_data(DataConfig(name="imagefolder", root=str(tmp_path), holdout_per_class=2), resolution=32,
                      seed=0, run_dir=tmp_path / "run")

    def batches(split, device, workers, train):  # type: ignore[no-untyped-def]
        return [(a.cpu(), b.cpu()) for a, b in split.loader(batch_size=4, train=train, seed=0, device=device,
                                                            workers=workers)]

    want = batches(data.test, "cpu", 0, False)
    for workers in (0, 2):
        got = batches(data.test, DEVICE, workers, False)
        assert len(got) == len(want)
        for (a, b), (c, d) in zip(got, want):
            assert torch.allclose(a, c, atol=1e-6) and torch.equal(b, d)
    first, second = batches(data.train, DEVICE, 0, True), batches(data.train, DEVICE, 2, True)
    assert len(first) == len(second) > 0
    for (a, b), (c, d) in zip(first, second):
        assert torch.equal(a, c) and torch.equal(b, d)
