"""ONNX export of a StaticBNN: binarised weights as constants, ``Sign`` on activations, standard ops only.

The graph is traced from the inference-only :class:`~nasbnn.engine.frozen.FrozenBNN` (the autograd sign
functions have no ONNX symbolic); :func:`check_onnx` compares onnxruntime with PyTorch.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EngineError

__all__ = ["check_onnx", "export_onnx"]


def export_onnx(static: Any, path: str | Path, *, opset: int = 17, resolution: int | None = None) -> Path:
    """Writes ``static`` (eval semantics) as a self-contained ONNX model; the batch size is dynamic.

    Args:
        static: a :class:`~nasbnn.models.StaticBNN`.
        path: output file (written atomically).
        opset: ONNX opset (>= 11).
        resolution: input size of the traced graph (default: the space's). The shortcut pooling is
            traced at this size.

    Raises:
        EngineError: the onnx package is missing or the opset is too old.
    """
    from ..utils.io import atomic_write_bytes
    from .frozen import freeze

    if opset < 11:
        raise EngineError(f"ONNX opset {opset} is too old; use 11 or newer (default 17)")
    try:
        import onnx
    except ImportError:  # pragma: no cover
        raise EngineError("ONNX export needs the onnx package: pip install 'nasbnn[onnx]'") from None
    frozen = freeze(static)
    space = static.space
    res = space.resolution if resolution is None else int(resolution)
    dummy = torch.zeros(1, space.in_channels, res, res)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(frozen, (dummy,), buf, input_names=["images"], output_names=["logits"],
                          opset_version=opset, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    model.doc_string = f"nasbnn StaticBNN, space {space.name!r}, arch {static.arch}"
    onnx.checker.check_model(model)
    p = Path(path)
    atomic_write_bytes(p, model.SerializeToString())
    return p


def check_onnx(static: Any, path: str | Path, x: Any) -> float:
    """Largest per-image relative L2 error between onnxruntime on ``path`` and ``static`` in eval mode.

    Raises:
        EngineError: onnxruntime is missing.
    """
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover
        raise EngineError("checking an ONNX model needs onnxruntime: pip install 'nasbnn[onnx]'") from None
    xt = torch.as_tensor(x, dtype=torch.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["logits"], {"images": xt.numpy()})
    with torch.no_grad():
        ref = static.cpu().eval()(xt).numpy()
    err = np.linalg.norm(out - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
    return float(err.max())
