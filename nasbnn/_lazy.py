"""Lazy package namespaces (PEP 562): a name is imported from its module on first use, so that importing a
package (the torch-free runtime, say) does not pull in what its other names need."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_namespace"]


def lazy_namespace(package: str, namespace: dict[str, Any], where: Mapping[str, str],
                   ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose names live in the submodules ``where`` gives.

    A resolved name is stored in ``namespace`` (the package's globals), so each is imported once.
    """

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return getattr_, dir_
