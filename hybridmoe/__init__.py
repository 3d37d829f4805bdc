"""HybridMoE-FreqNet tools: checkpoint loading, spandrel support, upscaling, evaluation,
fusion, ONNX export, benchmarks and traiNNer-redux integration.

The network itself is the single-file module ``hybridmoe_arch`` (``traiNNer/archs`` in a
checkout); the command line is ``hybridmoe`` (:mod:`hybridmoe.cli`).
"""

from __future__ import annotations

__version__ = "0.1.0"
