"""Synthetic music: an endless supply of tunes for the speech detector to learn is not a voice.

Why: the data hold five hold-music pieces (three for training) and a handful of Tux Paint
instruments, and a detector that has heard three tunes takes a fourth with a singing lead for
a talker. Each render is a short piece drawn from a few seeds' worth of choices: tempo, key,
scale, which of lead, chords, bass and drums play, and the lead's timbre (harmonic slope,
vibrato like a singer's or none, legato or detached notes), so that what the detector can
learn is what music has and speech has not (steady pitches on a scale, a metre, sustained
chords), not one recording's sound. A render is no-speech audio like ``train.data.tones``:
the degradation chain then adds the capture and network steps.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "pentatonic": (0, 2, 4, 7, 9),
}
_TOP_HZ = 7000.0


def _tone(rng: np.random.Generator, f0: float, n: int, *, slope_db: float, vibrato: float,
          attack: float, decay: float) -> np.ndarray:
    """One note of ``n`` samples: harmonics falling ``slope_db`` per octave, an optional
    5-6.5 Hz vibrato of ``vibrato`` (relative depth), and an attack/exponential-decay envelope."""
    t = np.arange(n) / SAMPLE_RATE
    freq = f0 * (1.0 + vibrato * np.sin(2 * np.pi * rng.uniform(5.0, 6.5) * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    out = np.zeros(n)
    for k in range(1, int(_TOP_HZ // (f0 * (1 + vibrato))) + 1):
        out += 10 ** (slope_db * np.log2(k) / 20) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    env = np.minimum(1.0, t / max(attack, 1e-3)) * np.exp(-t / decay)
    return out * env


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _drum(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    if kind == "kick":  # a falling sine thump
        f = rng.uniform(45, 70) * (1 + 2.0 * np.exp(-t / 0.03))
        return np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.exp(-t / rng.uniform(0.08, 0.2))
    noise = rng.standard_normal(n)
    if kind == "hat":  # bright noise, short
        return np.diff(noise, prepend=0.0) * 0.5 * np.exp(-t / rng.uniform(0.02, 0.06))
    return noise * np.exp(-t / rng.uniform(0.05, 0.15))  # snare


def synth_music(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples of a drawn piece, unit peak."""
    beat = 60.0 / rng.uniform(65, 150)
    root = int(rng.integers(45, 58))  # MIDI note of the key's bass root (110-233 Hz)
    scale = SCALES[str(rng.choice(list(SCALES)))]
    parts = {p for p in ("lead", "chords", "bass", "drums") if rng.random() < 0.6} or {"lead"}
    out = np.zeros(n)
    beats = int(np.ceil(n / SAMPLE_RATE / beat)) + 1

    def place(sound: np.ndarray, at: float, gain: float) -> None:
        start = int(at * SAMPLE_RATE)
        if start < n:
            out[start:start + len(sound)] += gain * sound[: n - start]

    def degree(d: int) -> int:  # scale degree d (any integer) above the root, in semitones
        return 12 * (d // len(scale)) + scale[d % len(scale)]

    if "lead" in parts:  # a melody in a singer's range (147-880 Hz), stepping mostly to neighbours
        slope, vibrato = rng.uniform(-12, -4), rng.choice([0.0, rng.uniform(0.005, 0.02)])
        legato = rng.random() < 0.5
        low, high = len(scale) // 2, 2 * len(scale)  # about 1.5 octaves above the root's fourth
        d, at = len(scale), 0.0
        while at < n / SAMPLE_RATE:
            length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
            note = _tone(rng, _midi_hz(root + degree(d)), int((length * (1.1 if legato else 0.8)) * SAMPLE_RATE),
                         slope_db=slope, vibrato=vibrato, attack=0.02, decay=length * (4 if legato else 1))
            place(note, at, 1.0)
            d = int(np.clip(d + rng.choice([-2, -1, -1, 0, 1, 1, 2]), low, high))
            at += length
    if "chords" in parts:  # sustained triads, one per bar of four beats
        for bar in range(0, beats, 4):
            d = int(rng.choice([0, 3, 4, 5]))
            for third in (0, 2, 4):
                f = _midi_hz(root + 12 + degree(d + third))  # an octave above the bass
                place(_tone(rng, f, int(4 * beat * SAMPLE_RATE), slope_db=-15, vibrato=0.0, attack=0.1,
                            decay=8 * beat), bar * beat, 0.35)
    if "bass" in parts:
        for b in range(0, beats, 2):
            place(_tone(rng, _midi_hz(root + degree(int(rng.choice([0, 4, 5])))), int(2 * beat * SAMPLE_RATE),
                        slope_db=-9, vibrato=0.0, attack=0.01, decay=beat), b * beat, 0.6)
    if "drums" in parts:
        for b in range(beats * 2):  # eighth notes: kick on 1 and 3, snare on 2 and 4, hats between
            at = b * beat / 2
            hit = "kick" if b % 4 == 0 else "snare" if b % 4 == 2 else "hat"
            place(_drum(rng, int(0.4 * SAMPLE_RATE), hit), at, 0.8 if hit != "hat" else 0.3)
    return out / (np.max(np.abs(out)) + 1e-12)
