"""train.data.no_speech_set: rows without speech become training rows that teach presence alone."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

pytest.importorskip("torch")

from train.data.no_speech_set import main  # noqa: E402
from train.distill import _target, clip_audio, merge_labels, with_audio  # noqa: E402
from train.students import FAMILY  # noqa: E402


def test_rows_render_once_and_read_back_as_presence_only_targets(tmp_path):
    out, audio = tmp_path / "hard.csv", tmp_path / "audio"
    args = ["--clips", "train=6", "--kinds", "tones,siren,synth-music", "--out", str(out), "--audio-dir", str(audio)]
    assert main(args) == 0
    rows = with_audio(merge_labels([out]))
    assert len(rows) == 6 and {r["split"] for r in rows} == {"train"}
    assert len({r["sha256"] for r in rows}) == 6 and len(list(audio.glob("*.npy"))) == 6
    for r in rows:
        target = _target(r, FAMILY["s"].outputs)
        assert target[-1] == 0.0 and all(math.isnan(t) for t in target[:-1])
        clip = clip_audio(r, audio)
        assert clip.dtype == np.float32 and np.abs(clip).max() > 0.001  # a sound, not silence
    before = {p.name: p.stat().st_mtime_ns for p in audio.glob("*.npy")}
    assert main(args) == 0  # a rerun writes the same rows and leaves the kept audio alone
    assert {p.name: p.stat().st_mtime_ns for p in audio.glob("*.npy")} == before
    with out.open() as f:
        assert [r["clip_id"] for r in csv.DictReader(f)] == [r["clip_id"] for r in rows]


def test_unknown_kinds_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--clips", "train=1", "--kinds", "foghorn", "--out", str(tmp_path / "x.csv")])
