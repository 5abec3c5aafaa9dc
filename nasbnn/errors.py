"""User-facing error types.

Every mistake a user can make (a bad architecture string, an unknown preset, a config key that does
not exist, a checkpoint of another search space) raises a subclass of :class:`NasbnnError`. The CLI
prints these as one line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NasbnnError(ValueError):
    """Base class of errors caused by user input, reported without a traceback."""


class InvalidArch(NasbnnError):
    """An architecture that is malformed or outside its search space.

    Attributes:
        rule: short name of the violated rule (e.g. ``"non-decreasing-width"``).
    """

    def __init__(self, message: str, *, rule: str = "format") -> None:
        super().__init__(message)
        self.rule = rule


class ConfigError(NasbnnError):
    """A configuration file or override that does not validate."""


class SpaceError(NasbnnError):
    """A search-space definition that is malformed: an unknown preset, an unreadable file, or stage
    options and sizes that do not make a consistent space."""


class CheckpointError(NasbnnError):
    """A checkpoint, bundle or packed model that cannot be used as asked."""


class DataError(NasbnnError):
    """A dataset that is missing or malformed."""


class SearchError(NasbnnError):
    """A search request that cannot be satisfied (e.g. an empty OPs range)."""


class OutputError(NasbnnError):
    """An output file or folder that cannot be created or written (a file in the way, a read-only file
    system, no permission)."""


class EngineError(NasbnnError):
    """A network the binary engine cannot pack or run, or engine settings out of range (threads, repeats,
    a latency fit without enough data)."""
