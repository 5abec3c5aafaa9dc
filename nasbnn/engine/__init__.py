"""Real binary inference: the packed model format, the numba XOR-popcount CPU engine, benchmarks,
a fitted latency model and ONNX export (see docs/engine.md).

Names are imported on first use, so that the CLI can register its subcommands without loading numba.
"""

from __future__ import annotations

from .._lazy import lazy_namespace

__all__ = [
    "FORMAT_VERSION",
    "BinaryEngine",
    "ConvSpec",
    "InputError",
    "InputSpec",
    "LatencyModel",
    "LayerTiming",
    "PackedModel",
    "benchmark",
    "check_onnx",
    "compare",
    "export_onnx",
    "fit_latency",
    "format_bench",
    "freeze",
    "latency_cost_fn",
    "pack_model",
]

_WHERE = {
    "FORMAT_VERSION": "packed",
    "ConvSpec": "packed",
    "InputSpec": "packed",
    "PackedModel": "packed",
    "pack_model": "packed",
    "BinaryEngine": "runtime",
    "InputError": "runtime",
    "LayerTiming": "runtime",
    "benchmark": "bench",
    "format_bench": "bench",
    "LatencyModel": "latency",
    "fit_latency": "latency",
    "latency_cost_fn": "latency",
    "export_onnx": "onnx_export",
    "check_onnx": "onnx_export",
    "compare": "verify",
    "freeze": "frozen",
}


__getattr__, __dir__ = lazy_namespace(__name__, globals(), _WHERE)
