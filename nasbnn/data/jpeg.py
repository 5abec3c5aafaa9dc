"""Baseline JPEGs decoded by libjpeg-turbo straight into a numpy array, through ``simplejpeg``.

Pillow decodes a JPEG into its own image (four bytes per pixel); simplejpeg writes packed RGB into numpy
with the same libjpeg-turbo settings (accurate integer IDCT, fancy upsampling), so the pixels are the
same, for about 10-20 % less CPU. Together with :mod:`.resample` (Pillow's bilinear resize on that array)
a training crop costs about 20 % less than through Pillow, pixel for pixel the same
(``benchmarks/bench_data.py`` reports both paths and their largest difference: 0).

Files go to Pillow instead when this path could differ or fail:

- files that are not JPEGs, and CMYK / YCCK JPEGs (Pillow converts CMYK to RGB its own way);
- images over Pillow's decompression-bomb limit (Pillow warns about or refuses them);
- JPEGs that libjpeg decodes only with a warning (simplejpeg refuses them in strict mode; Pillow decides);
- environments without simplejpeg, or a Pillow whose resize :mod:`.resample` does not reproduce.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["jpeg_array", "jpeg_size", "pillow_only", "prepare"]

_ACCEPTED_SPACES = ("YCbCr", "Gray")
_SOI = b"\xff\xd8"
_missing = object()
_module: Any = _missing


def _simplejpeg() -> Any:
    """The simplejpeg module, or None where it is not installed or Pillow's resize is not reproduced."""
    global _module
    if _module is _missing:
        from .resample import pillow_order

        try:
            _module = importlib.import_module("simplejpeg") if pillow_order() is not None else None
        except ImportError:
            _module = None
    return _module


def prepare() -> bool:
    """Loads simplejpeg and the compiled resize (probing Pillow once): whether the fast path is on.

    Called before loader workers start, so that forked workers inherit them instead of each spending
    1-2 s on it (8 s the first time on a machine, while numba compiles)."""
    return _simplejpeg() is not None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG that :func:`jpeg_array` may decode; None sends the file to Pillow."""
    if not data.startswith(_SOI):
        return None
    sj = _simplejpeg()
    if sj is None:
        return None
    try:
        height, width, space, _ = sj.decode_jpeg_header(data)
    except ValueError:
        return None
    if space not in _ACCEPTED_SPACES:
        return None
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        return None
    return width, height


def jpeg_array(data: bytes) -> np.ndarray | None:
    """uint8 [H, W, 3] RGB of a JPEG that :func:`jpeg_size` accepted, or None when libjpeg reports any
    problem (the caller then decodes the file with Pillow, which raises or tolerates it as it always has)."""
    try:
        return _simplejpeg().decode_jpeg(data, colorspace="RGB")  # type: ignore[no-any-return]
    except ValueError:
        return None


@contextmanager
def pillow_only() -> Iterator[None]:
    """Inside the block every file is decoded by Pillow (to compare the two paths; not thread-safe)."""
    global _module
    saved, _module = _module, None
    try:
        yield
    finally:
        _module = saved
