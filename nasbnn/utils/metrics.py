"""Run metrics: JSON lines (always) and TensorBoard events (when available)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import NasbnnError
from ..utils.io import JSONTextError, atomic_write_text, parse_json

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
            kept = [r for r in read_jsonl(self.path) if (s := _record_step(r)) is not None and s <= resume_step]
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


def _record_step(record: dict[str, Any]) -> int | None:
    """The ``step`` of a log record (0 when it has none; None when it is not an integer)."""
    step = record.get("step", 0)
    return None if isinstance(step, bool) or not isinstance(step, int) else step


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads the JSON objects of a log, one a line, skipping lines that are not one (a truncated last line
    of a writer killed mid-line, or damage)."""
    out = []
    p = Path(path)
    if not p.is_file():  # missing, or not a regular file (a pipe would block the reader)
        return out
    for line in p.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = parse_json(line)
        except JSONTextError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (``array``, ``string``, ``number``...)."""
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value),
                                                                                          type(value).__name__)


def read_jsonl_strict(path: str | Path, *, error: type[NasbnnError], hint: str = "",
                      ) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every line of an appended JSON-lines file (none when it is missing).

    Each line is written whole and ends with a newline, so a last line without its newline that does not
    parse is what a writer killed mid-line leaves: it is dropped with a warning. Any other line that is not
    a JSON object is damage.

    Raises:
        error: a damaged line (the message names the file and line, then ``hint``), or an unreadable file.
    """
    p = Path(path)
    if not p.exists():
        return []
    if not p.is_file():
        raise error(f"cannot read {str(p)!r}: it is not a regular file{hint}")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {str(p)!r}: {exc.strerror or exc}{hint}") from None
    lines = raw.split(b"\n")  # the last one follows the last newline: empty, or a line cut short
    out: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except JSONTextError as exc:
            if n == len(lines):
                _logger.warning("warning: dropping the unfinished last line %d of %s (a writer stopped mid-line)",
                                n, p)
                continue
            raise error(f"{str(p)!r} line {n} is damaged ({exc.reason}){hint}") from None
        if not isinstance(record, dict):
            raise error(f"{str(p)!r} line {n} is a JSON {json_kind(record)}, not an object{hint}")
        out.append((n, record))
    return out
