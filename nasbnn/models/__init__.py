"""Networks: the weight-sharing supernet and the exported static networks."""

from .blocks import BinaryBlock, Stem
from .static import StaticBNN
from .supernet import SuperBNN

__all__ = ["BinaryBlock", "StaticBNN", "Stem", "SuperBNN"]
