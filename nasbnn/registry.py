"""A tiny name -> factory registry; unknown names raise an error that lists the valid ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import NasbnnError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories of ``T``.

    Args:
        kind: what the registry holds, used in error messages ("search space", "dataset", ...).
        error: the error class an unknown name raises (a :class:`NasbnnError` subclass).
    """

    def __init__(self, kind: str, *, error: type[NasbnnError] = NasbnnError) -> None:
        self.kind = kind
        self.error = error
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers ``fn`` under ``name``; names are unique."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``.

        Raises:
            NasbnnError: ``name`` is unknown (of this registry's ``error`` class); the message lists the
                registered names.
        """
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise self.error(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def create(self, name: str, *args: object, **kwargs: object) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
