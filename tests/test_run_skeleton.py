"""The run skeleton on a toy recipe: exact resume, cadence, divergence, folder errors."""

from __future__ import annotations

import json

import pytest
import torch

from nasbnn.config import RunConfig
from nasbnn.data.base import EpochPlan
from nasbnn.errors import CheckpointError, DataError, OutputError
from nasbnn.presets import create_space
from nasbnn.train.run import Cadence, TrainingDiverged, TrainingRun, check_finite
from nasbnn.utils.metrics import read_jsonl


class ToyRecipe:
    """Linear regression on fixed data; batches from the same epoch plans as the real loaders."""

    kind = "toy"

    def __init__(self, n: int = 40, batch: int = 8, seed: int = 0, poison_step: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
        self.model = torch.nn.Linear(3, 1)
        torch.nn.init.zeros_(self.model.weight)
        torch.nn.init.zeros_(self.model.bias)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)
        self.space = create_space("tiny")
        self.batch = batch
        self.poison_step = poison_step
        self.evaluations: list[int] = []

    def batches(self, epoch, start_batch):
        plan = EpochPlan.make(len(self.x), batch_size=self.batch, train=True, seed=7, epoch=epoch,
                              start_batch=start_batch, rank=0, world_size=1, drop_last=True)
        for i in range(plan.start_batch, plan.num_batches):
            lo, hi = plan.batch_bounds(i)
            idx = plan.order[lo:hi]
            yield self.x[idx], self.y[idx]

    def batch_size(self, batch):
        return batch[0].shape[0]

    def step(self, batch, step):
        x, y = batch
        self.optimizer.zero_grad(set_to_none=True)
        loss = ((self.model(x).squeeze(1) - y) ** 2).mean()
        if step == self.poison_step:
            loss = loss * float("nan")
        loss.backward()
        check_finite(loss, step)
        self.optimizer.step()
        return {"loss": loss.detach()}

    def evaluate(self):
        self.evaluations.append(len(self.evaluations))
        with torch.no_grad():
            return {"mse": float(((self.model(self.x).squeeze(1) - self.y) ** 2).mean())}

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def checkpoint_extra(self):
        return {"note": "toy"}


CADENCE = Cadence(log_every=2, checkpoint_every=3, eval_every=5)


def _train(folder, *, resume=False, max_steps=None, recipe=None, epochs=3.0):
    recipe = recipe or ToyRecipe()
    run = TrainingRun(folder, RunConfig(), resume=resume, progress=False)
    run.start(recipe, run.load("toy"))
    summary = run.train(recipe, examples=len(recipe.x), batch_size=recipe.batch, epochs=epochs, cadence=CADENCE,
                        max_steps=max_steps)
    return recipe, summary


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full, s_full = _train(tmp_path / "full")
    assert s_full["step"] == s_full["total_steps"] == 15 and s_full["steps_per_epoch"] == 5
    _train(tmp_path / "cut", max_steps=7)  # checkpoints at 3, 6 and the stop at 7
    resumed, s_res = _train(tmp_path / "cut", resume=True)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert s_res == {**s_full, "checkpoint": str(tmp_path / "cut" / "checkpoint.pt")}
    steps = lambda folder: [r["step"] for r in read_jsonl(folder / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert steps(tmp_path / "cut") == steps(tmp_path / "full") == [2, 4, 6, 8, 10, 12, 14, 15]
    evals = [r["step"] for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "eval" in r]
    assert evals == [5, 10, 15]
    assert (tmp_path / "full" / "config.yaml").is_file()


def test_divergence_names_the_last_good_checkpoint(tmp_path):
    recipe = ToyRecipe(poison_step=4)
    with pytest.raises(TrainingDiverged, match=r"at step 4; the last good checkpoint is .*checkpoint\.pt"):
        _train(tmp_path / "run", recipe=recipe)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and state["extra"]["note"] == "toy"


def test_a_split_smaller_than_one_batch(tmp_path):
    recipe = ToyRecipe(n=5, batch=8)
    with pytest.raises(DataError, match="fewer than one batch of 8"):
        _train(tmp_path / "run", recipe=recipe)


def test_resume_without_a_checkpoint_and_a_file_in_the_way(tmp_path):
    with pytest.raises(CheckpointError, match="cannot resume: no checkpoint"):
        TrainingRun(tmp_path / "nothing", RunConfig(), resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        TrainingRun(tmp_path / "file", RunConfig())
    assert (tmp_path / "file").read_text() == "x"


def test_summary_json_is_written_atomically(tmp_path):
    run = TrainingRun(tmp_path, RunConfig(), progress=False)
    run.write_json("train_summary.json", {"step": 3})
    assert json.loads((tmp_path / "train_summary.json").read_text()) == {"step": 3}
    assert not list(tmp_path.glob(".*.tmp"))


def test_nan_gradients_under_a_finite_loss_stop_the_step():
    """A finite loss with NaN gradients (BatchNorm over two near-equal values, say) would turn every weight NaN in
    one optimizer step; the check stops it before the step, like a NaN loss."""
    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(1, 3)).sum().backward()
    check_finite(torch.tensor(1.0), 7, layer.parameters())  # finite gradients pass
    layer.weight.grad[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="gradients became NaN or infinite at step 7"):
        check_finite(torch.tensor(1.0), 7, layer.parameters())
    check_finite(torch.tensor(1.0), 7)  # without parameters: the loss only
