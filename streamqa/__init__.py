"""streamqa: real-time speech-quality monitoring with tiny distilled MOS students.

The runtime (everything under this package) runs on numpy + onnxruntime; torch is only
needed by ``train/`` and ``benchmarks/``. The Python API (streamqa.api) is re-exported
here: ``streamqa.score``, ``streamqa.score_file`` and ``streamqa.StreamScorer``.
"""

__version__ = "0.1.0"

from streamqa.api import AudioFileError, Score, StreamScorer, score, score_file  # noqa: E402

__all__ = ["AudioFileError", "Score", "StreamScorer", "__version__", "score", "score_file"]
