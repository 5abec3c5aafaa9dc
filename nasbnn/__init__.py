"""nasbnn: neural architecture search for binary neural networks (NAS-BNN).

The public surface: typed architectures and search spaces, the OPs counter, the weight-sharing
supernet, export of static networks, and interoperability with the official NAS-BNN code.
"""

__version__ = "0.1.0"

from .cost import Cost as Cost
from .cost import arch_cost as arch_cost
from .cost import layer_costs as layer_costs
from .errors import InvalidArch as InvalidArch
from .errors import NasbnnError as NasbnnError
from .export import export_subnet as export_subnet
from .models import StaticBNN as StaticBNN
from .models import SuperBNN as SuperBNN
from .presets import create_space as create_space
from .presets import list_spaces as list_spaces
from .presets import register_space as register_space
from .presets import resolve_space as resolve_space
from .space import Arch as Arch
from .space import BlockArch as BlockArch
from .space import SearchSpace as SearchSpace
from .space import StageArch as StageArch
from .space import StageSpec as StageSpec
from .upstream import arch_from_upstream as arch_from_upstream
from .upstream import arch_to_upstream as arch_to_upstream
from .upstream import load_upstream_checkpoint as load_upstream_checkpoint
from .upstream import load_upstream_search as load_upstream_search

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
