"""Evolutionary search over architectures, pure over :class:`Arch` (cost and fitness are injected).

The official protocol: an initial population (the smallest and largest members, then members
rejection-sampled into the cost range); then per generation ``num_mutations`` mutants and
``num_crossovers`` children of parents drawn uniformly from the frontier (the best candidate of
each cost bucket). Improvements over upstream: no architecture is evaluated twice (canonical
encoding), operators keep widths non-decreasing, bounded attempts instead of endless loops, seeded
per generation, and resumable: candidates already in the history are not re-evaluated, so a resumed
run reproduces an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from random import Random

from ..errors import SearchError
from ..space import Arch, SearchSpace
from ..utils.seeding import derive_rng
from .result import Budget, Candidate

__all__ = ["EvolutionSearch", "SearchState"]

_logger = logging.getLogger(__name__)

CostFn = Callable[[Arch], float]
EvaluateFn = Callable[[Sequence[Arch]], Sequence[float]]
DescribeFn = Callable[[Arch], tuple[float, float, float]]  # (mflops, mbops, mops)


@dataclass
class SearchState:
    """Everything evaluated so far and the frontier; rebuilt from the history on resume."""

    history: list[Candidate] = field(default_factory=list)
    frontier: dict[float, Candidate] = field(default_factory=dict)
    generation: int = -1  # last completed generation (-1: none; 0: the initial population)

    def visited(self) -> set[Arch]:
        return {c.arch for c in self.history}


class EvolutionSearch:
    """Upstream NAS-BNN evolution with the improvements listed in the module docstring.

    Args:
        space: the search space (provides sampling, mutation, crossover).
        cost_fn: the cost axis of an architecture (MOPs or milliseconds).
        describe_fn: (MFLOPs, MBOPs, MOPs) of an architecture, recorded with each candidate.
        evaluate_fn: top-1 (%) of a list of architectures (e.g. BN recalibration + validation).
        budget: cost range and bucket step.
        population, generations, num_mutations, num_crossovers, mutate_prob: as upstream.
        seed: all randomness derives from it (per generation), so runs are reproducible.
        max_attempts: tries to find new in-range candidates before giving up on a generation's quota.
    """

    def __init__(self, space: SearchSpace, *, cost_fn: CostFn, describe_fn: DescribeFn, evaluate_fn: EvaluateFn,
                 budget: Budget, population: int = 512, generations: int = 20, num_mutations: int = 128,
                 num_crossovers: int = 128, mutate_prob: float = 0.2, seed: int = 0,
                 max_attempts: int = 100_000) -> None:
        self.space = space
        self.cost_fn = cost_fn
        self.describe_fn = describe_fn
        self.evaluate_fn = evaluate_fn
        self.budget = budget
        self.population = population
        self.generations = generations
        self.num_mutations = num_mutations
        self.num_crossovers = num_crossovers
        self.mutate_prob = mutate_prob
        self.seed = seed
        self.max_attempts = max_attempts
        budget.check_feasible(cost_fn(space.smallest()), cost_fn(space.largest()))

    # ------------------------------------------------------------------ candidate generation
    def initial_population(self, rng: Random, visited: set[Arch], seeds: Sequence[Arch] = ()) -> list[Arch]:
        """``seeds`` (a family to continue from), the smallest and largest members (not range-checked, as
        upstream), then in-range samples up to ``population``."""
        out: list[Arch] = []
        seen = set(visited)
        for a in (*seeds, self.space.smallest(), self.space.largest()):
            if a not in seen:
                out.append(a)
                seen.add(a)
        attempts = 0
        while len(out) < self.population:
            attempts += 1
            if attempts > self.max_attempts:
                if not out:
                    raise SearchError("found no new architecture in the cost range; widen the range")
                _logger.warning("initial population: %d of %d after %d attempts", len(out), self.population,
                                self.max_attempts)
                break
            a = self.space.sample(rng)
            if a in seen or not self.budget.contains(self.cost_fn(a)):
                continue
            out.append(a)
            seen.add(a)
        return out

    def offspring(self, rng: Random, frontier: dict[float, Candidate], visited: set[Arch]) -> list[Arch]:
        """``num_mutations`` mutants then ``num_crossovers`` children, new and in range."""
        parents = [c.arch for _, c in sorted(frontier.items())]
        seen = set(visited)
        out: list[Arch] = []
        for quota, make in ((self.num_mutations, self._mutant), (self.num_crossovers, self._child)):
            made = attempts = 0
            while made < quota and attempts < self.max_attempts:
                attempts += 1
                a = make(rng, parents)
                if a in seen or not self.budget.contains(self.cost_fn(a)):
                    continue
                out.append(a)
                seen.add(a)
                made += 1
            if made < quota:
                _logger.warning("%s: %d of %d new candidates after %d attempts", make.__name__, made, quota,
                                attempts)
        return out

    def _mutant(self, rng: Random, parents: list[Arch]) -> Arch:
        return self.space.mutate(parents[int(rng.random() * len(parents))], self.mutate_prob, rng)

    def _child(self, rng: Random, parents: list[Arch]) -> Arch:
        a = parents[int(rng.random() * len(parents))]
        b = parents[int(rng.random() * len(parents))]
        return self.space.crossover(a, b, rng)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, archs: list[Arch], generation: int, cache: dict[Arch, Candidate],
                  on_candidate: Callable[[Candidate], None] | None) -> list[Candidate]:
        todo = [a for a in archs if a not in cache]
        if todo:
            scores = list(self.evaluate_fn(todo))
            if len(scores) != len(todo):
                raise RuntimeError("evaluate_fn returned a wrong number of scores")
            for a, s in zip(todo, scores):
                mflops, mbops, mops = self.describe_fn(a)
                c = Candidate(a, mflops, mbops, mops, float(self.cost_fn(a)), float(s), generation)
                cache[a] = c
                if on_candidate is not None:
                    on_candidate(c)
        return [cache[a] for a in archs]

    def _update(self, state: SearchState, new: list[Candidate]) -> None:
        for c in new:
            b = self.budget.bucket(c.cost)
            cur = state.frontier.get(b)
            if cur is None or cur.top1 < c.top1:
                state.frontier[b] = c
        state.history.extend(new)

    def run(self, *, history: Sequence[Candidate] = (), on_candidate: Callable[[Candidate], None] | None = None,
            on_generation: Callable[[int, SearchState], None] | None = None,
            seeds: Sequence[Arch] = ()) -> SearchState:
        """Runs the search; candidates found in ``history`` (a previous, interrupted run of the same
        search) are reused instead of evaluated again. ``seeds`` open the initial population (an
        imported family continues from there; they are scored like every other candidate)."""
        cache: dict[Arch, Candidate] = {}
        for c in history:
            cache.setdefault(c.arch, c)
        state = SearchState()
        rng = derive_rng(self.seed, "initial-population")
        init = self.initial_population(rng, set(), seeds)
        self._update(state, self._evaluate(init, 0, cache, on_candidate))
        state.generation = 0
        if on_generation is not None:
            on_generation(0, state)
        for g in range(1, self.generations + 1):
            rng = derive_rng(self.seed, "generation", g)
            kids = self.offspring(rng, state.frontier, state.visited())
            self._update(state, self._evaluate(kids, g, cache, on_candidate))
            state.generation = g
            if on_generation is not None:
                on_generation(g, state)
        return state
