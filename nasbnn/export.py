"""Export of one architecture from a supernet to a standalone network.

The layers export themselves (each elastic or shared layer and each block builds its exact-size
static counterpart); :meth:`SuperBNN.export` assembles them into a :class:`StaticBNN`. This module
keeps the function form for callers that pass the supernet as an argument.
"""

from __future__ import annotations

from .models.static import StaticBNN
from .models.supernet import SuperBNN
from .space import Arch

__all__ = ["export_subnet"]


def export_subnet(supernet: SuperBNN, arch: Arch | str) -> StaticBNN:
    """A :class:`StaticBNN` holding ``supernet``'s weights for ``arch``; see :meth:`SuperBNN.export`.

    Raises:
        InvalidArch: ``arch`` is not a member of the supernet's space.
    """
    return supernet.export(arch)
