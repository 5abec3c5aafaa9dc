"""Runs the ``nasbnn`` command line and freezes it at a chosen point, for tests that SIGKILL it exactly there.

    python freeze_at.py MARKER step N ARGS...       after the checkpoint of training step N is written
    python freeze_at.py MARKER candidate K ARGS...  when the search is about to score its K-th candidate

Once frozen, the process writes MARKER and sleeps until it is killed; it never reaches the point again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _freeze(marker: str) -> None:
    Path(marker).write_text("frozen")
    while True:
        time.sleep(3600)


def main() -> int:
    marker, kind, n, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    if kind == "step":
        from nasbnn.train.run import TrainingRun

        save = TrainingRun.save

        def save_then_freeze(self, recipe):  # type: ignore[no-untyped-def]
            save(self, recipe)
            if self.step >= n:
                _freeze(marker)

        TrainingRun.save = save_then_freeze  # type: ignore[method-assign]
    elif kind == "candidate":
        from nasbnn.search.evaluator import SupernetEvaluator

        score, seen = SupernetEvaluator.score, [0]

        def freeze_before_scoring(self, arch):  # type: ignore[no-untyped-def]
            seen[0] += 1
            if seen[0] == n:
                _freeze(marker)
            return score(self, arch)

        SupernetEvaluator.score = freeze_before_scoring  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown freeze point {kind!r}")
    from nasbnn.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
