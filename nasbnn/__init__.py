"""nasbnn: neural architecture search for binary neural networks (NAS-BNN).

The public surface: typed architectures and search spaces, the OPs counter, the weight-sharing
supernet, export of static networks, and interoperability with the official NAS-BNN code.

Names are imported on first use (PEP 562): the packed-model runtime (``nasbnn.engine.packed``,
``nasbnn.engine.runtime``, ``nasbnn infer``) must load on a device that has numpy, numba and
safetensors but neither PyTorch nor the training dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_namespace

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .cost import Cost, arch_cost, layer_costs
    from .errors import InvalidArch, NasbnnError
    from .export import export_subnet
    from .models import StaticBNN, SuperBNN
    from .presets import create_space, list_spaces, register_space, resolve_space
    from .space import Arch, BlockArch, SearchSpace, StageArch, StageSpec
    from .upstream import arch_from_upstream, arch_to_upstream, load_upstream_checkpoint, load_upstream_search

#: public name -> the submodule that defines it
_WHERE = {
    "Cost": "cost",
    "arch_cost": "cost",
    "layer_costs": "cost",
    "InvalidArch": "errors",
    "NasbnnError": "errors",
    "export_subnet": "export",
    "StaticBNN": "models",
    "SuperBNN": "models",
    "create_space": "presets",
    "list_spaces": "presets",
    "register_space": "presets",
    "resolve_space": "presets",
    "Arch": "space",
    "BlockArch": "space",
    "SearchSpace": "space",
    "StageArch": "space",
    "StageSpec": "space",
    "arch_from_upstream": "upstream",
    "arch_to_upstream": "upstream",
    "load_upstream_checkpoint": "upstream",
    "load_upstream_search": "upstream",
}

__all__ = [
    "Arch",
    "BlockArch",
    "Cost",
    "InvalidArch",
    "NasbnnError",
    "SearchSpace",
    "StageArch",
    "StageSpec",
    "StaticBNN",
    "SuperBNN",
    "__version__",
    "arch_cost",
    "arch_from_upstream",
    "arch_to_upstream",
    "create_space",
    "export_subnet",
    "layer_costs",
    "list_spaces",
    "load_upstream_checkpoint",
    "load_upstream_search",
    "register_space",
    "resolve_space",
]


__getattr__, __dir__ = lazy_namespace(__name__, globals(), _WHERE)
