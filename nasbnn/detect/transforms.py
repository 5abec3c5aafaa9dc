"""Detection geometry: aspect-preserving resize onto a fixed padded canvas, horizontal flips, and the
inverse map from canvas boxes back to original image coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Letterbox", "flip_boxes", "letterbox"]


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where an image lies on the canvas.

    Attributes:
        width, height: the original (declared) image size.
        new_width, new_height: its size on the canvas (top-left aligned).
        canvas: the canvas side.
    """

    width: int
    height: int
    new_width: int
    new_height: int
    canvas: int

    @property
    def scale_x(self) -> float:
        return self.new_width / self.width

    @property
    def scale_y(self) -> float:
        return self.new_height / self.height

    def to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """[m, 4] ``x0, y0, x1, y1`` in image pixels -> canvas pixels."""
        s = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float64)
        return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * s).astype(np.float32)

    def to_image(self, boxes: np.ndarray, *, flipped: bool = False) -> np.ndarray:
        """Inverse of :meth:`to_canvas` (after :func:`flip_boxes` when ``flipped``), clipped to the image."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if flipped:
            b = flip_boxes(b, self.new_width)
        s = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float64)
        b = b / s
        b[:, 0::2] = b[:, 0::2].clip(0, self.width)
        b[:, 1::2] = b[:, 1::2].clip(0, self.height)
        return b


def letterbox(width: int, height: int, canvas: int) -> Letterbox:
    """The placement of a ``width × height`` image on a ``canvas × canvas`` canvas.

    The image is scaled by ``canvas / max(width, height)``, each side rounded to whole pixels (so the
    two axes keep their own exact factors), and placed at the top-left corner; the rest is padding.
    """
    scale = canvas / max(width, height)
    nw = min(canvas, max(1, round(width * scale)))
    nh = min(canvas, max(1, round(height * scale)))
    return Letterbox(width, height, nw, nh, canvas)


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirrors ``x0, y0, x1, y1`` boxes about the vertical centre line of a ``width``-wide image.

    The image is flipped in place before padding, so on the canvas ``width`` is the resized width.
    """
    src = np.asarray(boxes)
    b = src.reshape(-1, 4).astype(np.result_type(src.dtype, np.float32), copy=True)
    x0 = b[:, 0].copy()
    b[:, 0] = width - b[:, 2]
    b[:, 2] = width - x0
    return b
