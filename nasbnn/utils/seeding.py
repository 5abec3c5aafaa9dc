"""Stable seed derivation: independent, reproducible random streams from (seed, purpose, step...)."""

from __future__ import annotations

import hashlib
import random

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and any parts (strings, ints); the same on every process and run."""
    h = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def derive_rng(seed: int, *parts: object) -> random.Random:
    return random.Random(derive_seed(seed, *parts))


def derive_generator(seed: int, *parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *parts))
