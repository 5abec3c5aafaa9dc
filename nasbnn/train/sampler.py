"""Which architectures a training step trains: the sandwich rule of the Bi-Teacher recipe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..space import Arch, SearchSpace
from ..utils.seeding import derive_rng


class Role(Enum):
    """What a student of the sandwich rule is: its losses are logged under its role's name."""

    LARGEST = "largest"
    SMALLEST = "smallest"
    RANDOM = "random"


@dataclass(frozen=True)
class StepPlan:
    """The teacher (largest, real-valued weights) and the students (binary weights) of one step."""

    teacher: Arch
    students: tuple[tuple[Role, Arch], ...]  # (role, arch), in training order


class SandwichSampler:
    """Largest as teacher; smallest plus ``num_random`` random members as students (optionally the
    largest with binary weights too, which trains the top of the family directly).

    Random members come from a generator seeded by (seed, step), so every rank of a distributed run
    draws the same architectures without communicating, and a resumed run draws what an
    uninterrupted one would have.
    """

    def __init__(self, space: SearchSpace, *, num_random: int = 2, seed: int = 0,
                 largest_student: bool = False) -> None:
        self.space = space
        self.num_random = num_random
        self.seed = seed
        self.largest_student = largest_student
        self._largest = space.largest()
        self._smallest = space.smallest()

    def plan(self, step: int) -> StepPlan:
        rng = derive_rng(self.seed, "sandwich", step)
        students = [(Role.LARGEST, self._largest)] if self.largest_student else []
        students.append((Role.SMALLEST, self._smallest))
        students += [(Role.RANDOM, self.space.sample(rng)) for _ in range(self.num_random)]
        return StepPlan(self._largest, tuple(students))
