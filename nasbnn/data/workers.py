"""Loader worker processes: how many cores this process may use, and a one-time warning on oversubscription."""

from __future__ import annotations

import logging
import os

__all__ = ["available_cores", "check_workers"]

log = logging.getLogger(__name__)
_warned: set[tuple[int, int, int]] = set()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_workers(workers: int) -> int:
    """Returns ``workers`` unchanged, warning once when the node's loader workers exceed its cores.

    Under torchrun every local process starts its own workers, so the count compared with the cores is
    ``workers * LOCAL_WORLD_SIZE``. Too many workers still work, but they compete with the training
    processes for the same cores, so throughput drops instead of rising.
    """
    if workers <= 0:
        return workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cores = available_cores()
    key = (workers, local, cores)
    if workers * local > cores and key not in _warned:
        _warned.add(key)
        per = f" per process x {local} processes" if local > 1 else ""
        log.warning("data.workers=%d%s exceeds the %d cores available to this process; loader workers will "
                    "compete for them (set data.workers to at most %d)", workers, per, cores, max(cores // local, 1))
    return workers
