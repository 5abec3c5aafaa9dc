"""Run metrics: JSON lines (always) and TensorBoard events (when available)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_text

_logger = logging.getLogger(__name__)


class Throughput:
    """Images per second between successive readings (the ``images_per_s`` of training logs)."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self._n = 0

    def add(self, images: int) -> None:
        self._n += images

    def read(self) -> float:
        """The rate since the previous reading (or construction), rounded to 0.1; restarts the count."""
        now = time.perf_counter()
        rate = round(self._n / max(now - self._t, 1e-9), 1)
        self._t, self._n = now, 0
        return rate


def step_record(step: int, steps_per_epoch: int, lr: float, losses: dict[str, Any], images_per_s: float,
                ) -> dict[str, Any]:
    """One training-log line: step, fractional epoch, learning rate, the named losses and throughput."""
    return {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr,
            **{k: round(float(v), 5) for k, v in losses.items()}, "images_per_s": images_per_s}


class MetricsWriter:
    """Appends one JSON object per record to ``<folder>/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Args:
        resume_step: when resuming, records after this step (written by the killed run after its
            last checkpoint) are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, folder: str | Path, *, resume_step: int | None = None, tensorboard: bool = True,
                 filename: str = "metrics.jsonl") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / filename
        if resume_step is not None and self.path.exists():
            kept = [line for line in read_jsonl(self.path) if int(line.get("step", 0)) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.folder / "tb"), purge_step=resume_step)
            except Exception as exc:  # tensorboard missing or broken: JSON lines still work
                _logger.warning("TensorBoard events disabled: %s", exc)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            step = int(record.get("step", 0))
            for k, v in _flatten(record).items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads JSON lines, skipping a truncated last line (a writer killed mid-line)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
