"""Binary, quantised and weight-sharing layers."""

from .elastic import ElasticBinaryConv2d, ElasticLinear, ElasticQConv2d, Precision
from .functions import approx_sign, grad_scale, round_ste, ste_sign
from .layers import (
    BinaryConv2d,
    QConv2d,
    RPReLU,
    RSign,
    SharedBatchNorm2d,
    binarize_weight,
    lsq_quantize_weight,
    normalize_weight,
    shortcut_add,
)

__all__ = [
    "BinaryConv2d",
    "ElasticBinaryConv2d",
    "ElasticLinear",
    "ElasticQConv2d",
    "Precision",
    "QConv2d",
    "RPReLU",
    "RSign",
    "SharedBatchNorm2d",
    "approx_sign",
    "binarize_weight",
    "grad_scale",
    "lsq_quantize_weight",
    "normalize_weight",
    "round_ste",
    "shortcut_add",
    "ste_sign",
]
