"""Evolutionary search for a binary model family on a trained supernet."""

from .evaluator import SupernetEvaluator
from .evolution import EvolutionSearch, SearchState
from .result import Budget, Candidate, pareto_front

__all__ = ["Budget", "Candidate", "EvolutionSearch", "SearchState", "SupernetEvaluator", "pareto_front"]
