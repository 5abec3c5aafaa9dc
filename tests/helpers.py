"""Test helpers."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every parameter and BN statistic a non-trivial value (BN stats, shifts, slopes, matrices)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("fp2bin",)) or "transform_" in name:
            p.copy_(torch.eye(p.shape[0]) + 0.05 * torch.randn(p.shape, generator=g))
        elif name.endswith("slope"):
            p.copy_(0.25 + 0.05 * torch.randn(p.shape, generator=g))
        elif name.endswith("step_size"):
            p.copy_(p * (0.8 + 0.4 * torch.rand(p.shape, generator=g)))
        elif p.ndim >= 2:
            continue  # keep the initialised conv/linear weights
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("bn1.weight") else 0.0))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


#: The tiny space on a generated dataset: the overrides every quick CLI or library run of the tests starts from.
TINY = ["space.name=tiny", "data.name=synthetic", "data.holdout_per_class=8", "data.batch_size=16",
        "data.eval_batch_size=64", "data.synthetic.num_train=160", "data.synthetic.num_test=64", "device=cpu"]
#: A search over the tiny space's whole OPs range in a few seconds.
TINY_SEARCH = ["search.population=24", "search.generations=4", "search.num_mutations=10", "search.num_crossovers=10",
               "search.budget.min=0.002", "search.budget.max=0.012", "search.budget.step=0.002",
               "search.calib_batches=2", "search.calib_batch_size=32"]


def torchrun(nproc: int = 2) -> list[str]:
    """The torchrun prefix; ``--standalone`` lets it pick a free rendezvous port itself (no probed port that
    another process may take first)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def run_frozen(tmp_path, point: str, n: int, args: list[str], env: dict[str, str], timeout: float = 300):  # type: ignore[no-untyped-def]
    """Starts ``nasbnn ARGS`` frozen at ``point`` ``n`` (see ``freeze_at.py``), waits until it says it is
    there, kills it with SIGKILL and returns its exit status. Fails if it ends before reaching the point."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    marker = Path(tmp_path) / f"frozen-{point}-{n}"
    script = Path(__file__).with_name("freeze_at.py")
    proc = subprocess.Popen([sys.executable, str(script), str(marker), point, str(n), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout  # a safety net only: the kill point is the step, not the time
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {point} {n}: "
                                 f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach {point} {n} within {timeout} s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def one_line_error(capsys, argv, *needles):  # type: ignore[no-untyped-def]
    """Runs ``nasbnn argv`` in-process; asserts exit status 2 and a one-line error holding every needle."""
    from nasbnn.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err
