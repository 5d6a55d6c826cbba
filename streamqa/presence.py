"""Which windows hold speech: the one rule every scoring applies (streamqa.scorer).

A MOS is only meaningful for a window with speech in it, so ``mos: null`` must mean "no
speech here", never "speech I cannot hear through the noise". A level-based detector
(streamqa.activity) cannot tell speech under 0 dB noise or long reverberation from noise
alone; a student trained for it can. So:

- a model whose metadata ``outputs`` include ``speech`` (:data:`PRESENCE_OUTPUT`: the
  probability, already a sigmoid in the graph, that the window holds speech, from the same
  ``step()`` call) decides: a window is speech iff that probability is at least
  :data:`SPEECH_THRESHOLD`;
- a model without it (older or user-made students) keeps the level-based gate unchanged: a
  window is speech iff at least ``MIN_SPEECH_FRACTION`` of its 40 ms frames are active.

A window that is not speech publishes no MOS, but its background-noise score (``bak``) is
still meaningful (a pause in a noisy call is exactly what BAK judges), so it is kept; the
other quality outputs are null. Such windows never enter a rolling MOS or a summary, so
never a file's MOS (the mean of its summary). The presence column itself is never a quality score: it is published as
``speech``/``speech_p``, never among the outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamqa.activity import ActivityDetector

if TYPE_CHECKING:
    from streamqa.model import ModelInfo

PRESENCE_OUTPUT = "speech"  # the metadata output name of the speech-presence probability
# A window is speech iff its presence probability is at least this. 0.5 is the decision the
# presence head was trained for (balanced log loss on "the clean source of this window is at
# least MIN_SPEECH_FRACTION active"); a monitor that would rather miss a noisy pause than a
# quiet talker lowers it.
SPEECH_THRESHOLD = 0.5
# Quality outputs that still mean something on a window without speech.
NOISE_OUTPUTS = frozenset({"bak"})
# The documented range of every published quality score (ITU-T P.800's 1-5 scale). A
# student is a regression head and can step outside it on audio unlike its training data;
# a published 0.96 reads as a broken monitor, so scores are clamped and the raw value is
# kept only where docs/protocol.md says (``raw``).
SCORE_RANGE = (1.0, 5.0)


def clamp_score(value: float) -> float:
    """A quality score as published: within :data:`SCORE_RANGE` (NaN stays NaN)."""
    lo, hi = SCORE_RANGE
    return min(hi, max(lo, value)) if value == value else value


def out_of_range(info: ModelInfo, scores: np.ndarray | None, speech: bool) -> dict[str, float] | None:
    """The raw values of a window's quality outputs when one it publishes (see
    :func:`window_outputs`) was clamped: the score message's ``raw``. None otherwise."""
    if scores is None:
        return None
    lo, hi = SCORE_RANGE
    raw = {n: float(scores[i]) for i, n in enumerate(info.outputs) if n in info.scores}
    published = (v for n, v in raw.items() if speech or n in NOISE_OUTPUTS)
    return raw if any(not lo <= v <= hi for v in published if v == v) else None


def is_speech(probability: float) -> bool:
    """The rule for one window of a model with a presence output (NaN is not speech)."""
    return bool(probability >= SPEECH_THRESHOLD)


def detector(info: ModelInfo) -> str:
    """What decides speech for this model: ``"model"`` (its presence output) or ``"level"``."""
    return "level" if info.presence is None else "model"


@dataclass(frozen=True)
class Judgement:
    """One live window's speech decision.

    ``fraction`` is the share of the current window judged speech, at the detector's own
    resolution: with the model, the share of the hops of the last window whose window it
    judged speech; with the level gate, the share of the window's active 40 ms frames.
    ``probability`` is the model's presence probability (None for the level gate or when the
    model gave no finite score)."""

    speech: bool
    fraction: float
    probability: float | None


class StreamPresence:
    """Per-stream state of the rule for the live engine (one instance per stream).

    With a presence model only a ring of the last window's hop decisions is kept; the level
    detector (which tracks the stream's noise floor) is built only for models without it, so
    a presence model costs nothing per hop beyond its own output."""

    def __init__(self, info: ModelInfo, window_frames: int, hop_frames: int) -> None:
        self._column = info.presence
        self._level = ActivityDetector(info.frame_samples, window_frames) if self._column is None else None
        self._recent = np.zeros(max(1, round(window_frames / max(1, hop_frames))), bool)
        self._at = 0
        self._n = 0

    def judge(self, audio: np.ndarray, scores: np.ndarray | None) -> Judgement:
        """Decide the window that ends with this hop. ``audio`` is the hop (the level gate's
        input); ``scores`` the model's row for the window, None when it has none (non-finite
        input, model failure): a presence model then calls the window "not speech"."""
        if self._level is not None:
            _, fraction = self._level.update(audio)
            return Judgement(self._level.judgeable(fraction), fraction, None)
        p = float(scores[self._column]) if scores is not None else math.nan
        speech = is_speech(p)
        self._recent[self._at] = speech
        self._at = (self._at + 1) % len(self._recent)
        self._n = min(self._n + 1, len(self._recent))
        fraction = int(np.count_nonzero(self._recent[: self._n])) / self._n
        return Judgement(speech, fraction, p if math.isfinite(p) else None)


def window_outputs(info: ModelInfo, scores: np.ndarray | None, speech: bool) -> tuple[float | None, dict[str, float | None]]:
    """What a window publishes: ``(mos, outputs)``. ``outputs`` holds every quality output
    but ``mos`` (never the presence column); without speech ``mos`` is None and only the
    :data:`NOISE_OUTPUTS` keep their value. Values are clamped to :data:`SCORE_RANGE`."""
    names = info.scores
    values = {} if scores is None else {n: clamp_score(float(scores[i])) for i, n in enumerate(info.outputs) if n in names}
    mos = values.get("mos") if speech else None
    outputs = {n: values.get(n) if speech or n in NOISE_OUTPUTS else None for n in names[1:]}
    return mos, outputs
