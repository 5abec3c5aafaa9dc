"""Shared test fixtures: small spaces and seeded generators."""

from __future__ import annotations

import random

import pytest
import torch

from nasbnn.presets import create_space


@pytest.fixture
def tiny_space():
    return create_space("tiny")


@pytest.fixture
def rng():
    return random.Random(1234)


@pytest.fixture(autouse=True)
def _single_thread_torch():
    # Two-core CI machines: one intra-op thread per test keeps timings stable and avoids oversubscription.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
