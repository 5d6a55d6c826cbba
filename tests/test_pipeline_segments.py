"""The pipeline labels a grown manifest part by part: base rows, real voices, rows without
speech, and the runs a later extension appends after them."""
from __future__ import annotations

from train.data.manifest import NO_SPEECH, ClipRow, write_manifest
from train.pipeline import row_segments, split_runs


def _row(i: int, speaker: str) -> ClipRow:
    uid = NO_SPEECH if speaker == NO_SPEECH else f"u-{speaker}"
    return ClipRow(f"train-{i:06d}", uid, speaker, "xx", "train", 0, "[]", i)


def _runs(runs: list[slice]) -> list[tuple[int, int]]:
    return [(r.start, r.stop) for r in runs]


def test_segments_follow_the_appended_parts(tmp_path):
    speakers = ["espeak-de+m1", "asterisk-allison", "festival-kal_diphone", "tuxpaint-fr", "kde-ru",
                "tuxpaint-fr", NO_SPEECH, NO_SPEECH]
    path = tmp_path / "train.csv"
    write_manifest([_row(i, s) for i, s in enumerate(speakers)], path)
    seg = row_segments(path)
    assert (_runs(seg["base"]), _runs(seg["real"]), _runs(seg["none"])) == ([(0, 3)], [(3, 6)], [(6, 8)])
    write_manifest([_row(i, s) for i, s in enumerate(speakers[:3])], path)
    seg = row_segments(path)
    assert (_runs(seg["base"]), seg["real"], seg["none"]) == ([(0, 3)], [], [])


def test_a_second_extension_adds_runs_of_the_same_kinds(tmp_path):
    speakers = ["espeak-de+m1", "tuxpaint-fr", NO_SPEECH, "kde-ru", "tuxpaint-fr", NO_SPEECH]
    path = tmp_path / "train.csv"
    write_manifest([_row(i, s) for i, s in enumerate(speakers)], path)
    seg = row_segments(path)
    assert (_runs(seg["base"]), _runs(seg["real"]), _runs(seg["none"])) == \
        ([(0, 1)], [(1, 2), (3, 5)], [(2, 3), (5, 6)])


def test_split_runs_takes_the_first_rows_across_runs():
    runs = [slice(10, 13), slice(20, 25)]
    assert tuple(map(_runs, split_runs(runs, 4))) == ([(10, 13), (20, 21)], [(21, 25)])
    assert tuple(map(_runs, split_runs(runs, 2))) == ([(10, 12)], [(12, 13), (20, 25)])
    assert tuple(map(_runs, split_runs(runs, None))) == ([(10, 13), (20, 25)], [])
    assert tuple(map(_runs, split_runs(runs, 0))) == ([], [(10, 13), (20, 25)])
    assert tuple(map(_runs, split_runs(runs, 99))) == ([(10, 13), (20, 25)], [])
