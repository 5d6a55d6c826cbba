"""The pipeline labels a grown manifest part by part: base rows, real voices, rows without speech."""
from __future__ import annotations

from train.data.manifest import NO_SPEECH, ClipRow, write_manifest
from train.pipeline import row_segments


def _row(i: int, speaker: str) -> ClipRow:
    uid = NO_SPEECH if speaker == NO_SPEECH else f"u-{speaker}"
    return ClipRow(f"train-{i:06d}", uid, speaker, "xx", "train", 0, "[]", i)


def test_segments_follow_the_appended_parts(tmp_path):
    speakers = ["espeak-de+m1", "asterisk-allison", "festival-kal_diphone", "tuxpaint-fr", "kde-ru",
                "tuxpaint-fr", NO_SPEECH, NO_SPEECH]
    path = tmp_path / "train.csv"
    write_manifest([_row(i, s) for i, s in enumerate(speakers)], path)
    seg = row_segments(path)
    assert (seg["base"].start, seg["base"].stop) == (0, 3)
    assert (seg["real"].start, seg["real"].stop) == (3, 6)
    assert (seg["none"].start, seg["none"].stop) == (6, 8)
    write_manifest([_row(i, s) for i, s in enumerate(speakers[:3])], path)
    seg = row_segments(path)
    assert (seg["base"].stop, seg["real"].start, seg["real"].stop, seg["none"].start) == (3, 3, 3, 3)
    write_manifest([_row(i, s) for i, s in enumerate(speakers[:3] + [NO_SPEECH])], path)
    seg = row_segments(path)
    assert (seg["base"].stop, seg["real"].start, seg["real"].stop, seg["none"].start) == (3, 3, 3, 3)
