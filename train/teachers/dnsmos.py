"""DNSMOS P.835 teacher: the ``sig_bak_ovr.onnx`` network shipped in the PyPI ``speechmos`` package.

DNSMOS adds what Distill-MOS lacks: separate signal (SIG), background-noise (BAK) and overall
(OVRL) scores. ``speechmos.dnsmos.run`` is not used because it imports librosa and requests,
builds a second (P.808) session on every first call and runs one window per ``session.run``;
this class keeps one session with pinned threads and batches every window of every clip into a
single call. The windowing and calibration below reproduce speechmos exactly (same floats), so
labels equal ``speechmos.dnsmos.run(clip, 16000)``'s ``sig_mos``/``bak_mos``/``ovrl_mos``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from train.teachers.base import SAMPLE_RATE, check_clip

INPUT_SECONDS = 9.01
WINDOW_SAMPLES = int(INPUT_SECONDS * SAMPLE_RATE)  # 144160

# Second-order calibration polynomials of the non-personalised DNSMOS P.835 model,
# highest power first (numpy.polyval order), as applied by speechmos/dnsmos.py.
CALIBRATION: dict[str, tuple[float, float, float]] = {
    "sig": (-0.08397278, 1.22083953, 0.0052439),
    "bak": (-0.13166888, 1.60915514, -0.39604546),
    "ovrl": (-0.06766283, 1.11546468, 0.04602535),
}


def model_path() -> Path:
    """Where the installed speechmos package keeps the P.835 ONNX network."""
    return Path(str(importlib.resources.files("speechmos") / "dnsmos_models" / "sig_bak_ovr.onnx"))


def windows(clip: np.ndarray) -> np.ndarray:
    """The [W, 144160] windows DNSMOS averages over for one clip.

    Like speechmos: a clip shorter than one window is doubled (whole-array repeats, so the
    result can be up to twice the window) until it is long enough, then windows start every
    second. The end index uses the same float expression as speechmos so that the window set
    is identical, including the windows it drops when truncation makes them one sample short.
    """
    audio = clip
    while audio.size < WINDOW_SAMPLES:
        audio = np.concatenate([audio, audio])
    num_hops = int(np.floor(audio.size / SAMPLE_RATE) - INPUT_SECONDS) + 1
    segments = []
    for idx in range(num_hops):
        segment = audio[int(idx * SAMPLE_RATE) : int((idx + INPUT_SECONDS) * SAMPLE_RATE)]
        if segment.size == WINDOW_SAMPLES:
            segments.append(segment)
    return np.stack(segments).astype(np.float32, copy=False)


class DnsmosTeacher:
    """Scores clips with DNSMOS P.835; outputs ``sig``, ``bak``, ``ovrl`` (calibrated MOS scale)."""

    name = "dnsmos"
    outputs: tuple[str, ...] = ("sig", "bak", "ovrl")
    sample_rate = SAMPLE_RATE
    max_windows: int | None = None  # None: every window speechmos would score

    def __init__(self, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self.session.get_inputs()[0].name

    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, float]]:
        """Score clips of any length. Samples outside [-1, 1] are clipped first (what any
        16-bit PCM path would do to them; speechmos refuses such input instead)."""
        if not clips:
            return []
        per_clip = [windows(np.clip(check_clip(c, self.name), -1.0, 1.0))[: self.max_windows] for c in clips]
        raw = self.session.run(None, {self._input: np.concatenate(per_clip)})[0].astype(np.float64)
        results = []
        start = 0
        for w in per_clip:
            clip_raw = raw[start : start + len(w)]
            start += len(w)
            results.append(
                {
                    key: float(np.mean(np.polyval(CALIBRATION[key], clip_raw[:, column])))
                    for column, key in enumerate(self.outputs)
                }
            )
        return results


class DnsmosOneWindowTeacher(DnsmosTeacher):
    """DNSMOS on the first 9.01 s window only (registered as ``dnsmos1``).

    A 7.68 s training clip is doubled to 15.36 s and speechmos averages six windows that
    all hold nearly the same content; the first one alone costs a sixth and is what makes
    DNSMOS labels affordable for tens of thousands of clips on a CPU. Its labels are
    cached under their own teacher name, so they never mix with full ``dnsmos`` labels.
    """

    name = "dnsmos1"
    max_windows = 1
