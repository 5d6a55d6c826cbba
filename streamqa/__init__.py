"""streamqa: real-time speech-quality monitoring with tiny distilled MOS students.

The runtime (everything under this package) runs on numpy + onnxruntime; torch is only
needed by ``train/`` and ``benchmarks/``.
"""

__version__ = "0.1.0"
