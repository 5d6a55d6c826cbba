"""The labelling job: content-hash cache, kill-and-resume, disjoint shards, CSV assembly.

Core tests use counting stand-in teachers so they can assert exactly which clips were scored;
one integration test runs the real CLI with the real DNSMOS teacher on a tiny corpus.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.label import (
    Item,
    LabelCache,
    Progress,
    assemble,
    clip_sha256,
    import_labels,
    label,
    load_cached_audio,
    main,
    parse_rows,
    parse_shard,
    shard_items,
)

REPO = Path(__file__).resolve().parents[1]


class CountingTeacher:
    """Scores a clip by its RMS; records every clip it is asked about and can fail on a call."""

    outputs = ("mos",)
    sample_rate = 16000

    def __init__(self, name: str = "distillmos", fail_on_call: int | None = None) -> None:
        self.name = name
        self.calls = 0
        self.scored: list[str] = []
        self.fail_on_call = fail_on_call

    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, float]]:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("killed")
        self.scored += [clip_sha256(c) for c in clips]
        return [{"mos": 1.0 + float(np.sqrt(np.mean(c**2)))} for c in clips]


class DnsmosLike(CountingTeacher):
    outputs = ("sig", "bak", "ovrl")

    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, float]]:
        return [{"sig": r["mos"], "bak": 2.0, "ovrl": 3.0} for r in super().score_batch(clips)]


def make_items(n: int, renders: list[str] | None = None) -> list[Item]:
    def render(i: int) -> np.ndarray:
        if renders is not None:
            renders.append(f"c{i}")
        return (0.01 * (i + 1) * np.sin(np.arange(2000) * (0.01 + 0.001 * i))).astype(np.float32)

    return [Item(f"c{i}", "train", f"spk{i % 3}", f"key{i}", lambda i=i: render(i)) for i in range(n)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_scores_every_clip_once_and_rerun_scores_nothing(tmp_path: Path) -> None:
    items = make_items(10)
    teacher = CountingTeacher()
    label(items, [teacher], LabelCache(tmp_path / "cache"), audio_dir=tmp_path / "audio", batch_size=3)
    assert teacher.calls == 4 and len(teacher.scored) == 10

    renders: list[str] = []
    again = CountingTeacher()
    label(make_items(10, renders), [again], LabelCache(tmp_path / "cache"), audio_dir=tmp_path / "audio")
    assert again.calls == 0
    assert renders == []  # keys and stored audio are known: nothing is rendered again


def test_killed_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    items = make_items(10)
    killed = CountingTeacher(fail_on_call=3)
    cache = LabelCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        label(items, [killed], cache, audio_dir=None, batch_size=2)
    cache.close()
    assert len(killed.scored) == 4  # two batches of two made it to the cache

    resumed = CountingTeacher()
    label(items, [resumed], LabelCache(tmp_path / "cache"), audio_dir=None, batch_size=2)
    assert len(resumed.scored) == 6
    assert set(resumed.scored).isdisjoint(killed.scored)
    assert set(resumed.scored) | set(killed.scored) == {clip_sha256(i.render()) for i in items}


def test_line_cut_short_by_a_kill_is_ignored_and_not_glued_to(tmp_path: Path) -> None:
    items = make_items(4)
    label(items, [CountingTeacher()], LabelCache(tmp_path / "cache"), audio_dir=None)
    path = tmp_path / "cache" / "labels-0-of-1.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:15])  # last score line half written

    teacher = CountingTeacher()
    label(items, [teacher], LabelCache(tmp_path / "cache"), audio_dir=None)
    assert len(teacher.scored) == 1
    cache = LabelCache(tmp_path / "cache")
    assert len(cache.scores) == 4 and len(cache.sha_by_key) == 4


def test_shards_are_disjoint_and_complete(tmp_path: Path) -> None:
    items = make_items(11)
    shards = []
    for index in range(3):
        teacher = CountingTeacher()
        mine = shard_items(items, index, 3)
        label(mine, [teacher], LabelCache(tmp_path / "cache", (index, 3)), audio_dir=None)
        shards.append(set(teacher.scored))
        assert len(teacher.scored) == len(mine)
    assert sum(len(s) for s in shards) == 11
    assert set.union(*shards) == {clip_sha256(i.render()) for i in items}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "labels-0-of-3.jsonl", "labels-1-of-3.jsonl", "labels-2-of-3.jsonl"]

    out = tmp_path / "labels.csv"
    assert assemble(items, ["distillmos"], LabelCache(tmp_path / "cache"), out) == 0
    rows = read_csv(out)
    assert [r["clip_id"] for r in rows] == [f"c{i}" for i in range(11)]


def test_assembly_reports_clips_other_shards_have_not_done(tmp_path: Path) -> None:
    items = make_items(6)
    label(shard_items(items, 0, 2), [CountingTeacher()], LabelCache(tmp_path / "c", (0, 2)), audio_dir=None)
    out = tmp_path / "labels.csv"
    assert assemble(items, ["distillmos"], LabelCache(tmp_path / "c"), out) == 3
    assert [r["clip_id"] for r in read_csv(out)] == ["c0", "c2", "c4"]


def test_csv_columns_and_empty_cells_for_teachers_not_run(tmp_path: Path) -> None:
    items = make_items(3)
    cache = LabelCache(tmp_path / "cache")
    label(items, [CountingTeacher(), DnsmosLike("dnsmos")], cache, audio_dir=None)
    out = tmp_path / "both.csv"
    assemble(items, ["distillmos", "dnsmos"], cache, out)
    rows = read_csv(out)
    assert list(rows[0]) == ["clip_id", "sha256", "split", "speaker", "mos", "sig", "bak", "ovrl"]
    assert rows[1]["speaker"] == "spk1" and rows[1]["split"] == "train"
    assert rows[1]["sha256"] == clip_sha256(items[1].render())
    assert float(rows[1]["mos"]) == pytest.approx(float(rows[1]["sig"]))
    assert rows[1]["ovrl"] == "3.000000"

    assemble(items, ["dnsmos"], cache, out)
    rows = read_csv(out)
    assert rows[0]["mos"] == "" and rows[0]["bak"] == "2.000000"


def test_another_teacher_mos_gets_a_prefixed_column(tmp_path: Path) -> None:
    items = make_items(2)
    cache = LabelCache(tmp_path / "cache")
    label(items, [CountingTeacher("xlsr_sqa")], cache, audio_dir=None)
    out = tmp_path / "x.csv"
    assemble(items, ["xlsr_sqa"], cache, out)
    rows = read_csv(out)
    assert list(rows[0])[-1] == "xlsr_sqa_mos" and rows[0]["mos"] == "" and rows[0]["xlsr_sqa_mos"] != ""


def test_kept_audio_is_int16_and_round_trips(tmp_path: Path) -> None:
    items = make_items(2)
    label(items, [CountingTeacher()], LabelCache(tmp_path / "cache"), audio_dir=tmp_path / "audio")
    clip = items[1].render()
    sha = clip_sha256(clip)
    assert np.load(tmp_path / "audio" / f"{sha}.npy").dtype == np.int16
    np.testing.assert_allclose(load_cached_audio(sha, tmp_path / "audio"), clip, atol=0.5 / 32768)

    # Audio deleted later is restored from a re-render without scoring again.
    (tmp_path / "audio" / f"{sha}.npy").unlink()
    teacher = CountingTeacher()
    label(items, [teacher], LabelCache(tmp_path / "cache"), audio_dir=tmp_path / "audio")
    assert teacher.calls == 0 and (tmp_path / "audio" / f"{sha}.npy").exists()


def test_a_second_teacher_scores_only_what_it_lacks(tmp_path: Path) -> None:
    items = make_items(4)
    first = CountingTeacher()
    label(items, [first], LabelCache(tmp_path / "cache"), audio_dir=None)
    first_again, second = CountingTeacher(), DnsmosLike("dnsmos")
    label(items, [first_again, second], LabelCache(tmp_path / "cache"), audio_dir=None)
    assert first_again.calls == 0 and len(second.scored) == 4


def test_fixed_columns_match_the_teachers_outputs() -> None:
    from train.label import BARE_OUTPUTS, CSV_COLUMNS
    from train.teachers.base import teacher_class

    for name, outputs in BARE_OUTPUTS.items():
        assert teacher_class(name).outputs == outputs
        assert set(outputs) <= set(CSV_COLUMNS)


def test_progress_line_has_rate_and_eta() -> None:
    stream = io.StringIO()
    progress = Progress(10, "0/1", interval=0.0, stream=stream)
    progress.update(scored=2)
    progress.update(cached=3)
    last = stream.getvalue().splitlines()[-1]
    assert "5/10 clips (2 scored, 3 cached)" in last and "clips/s" in last and "ETA" in last


def test_shard_argument_is_checked() -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "-1/3"):
        with pytest.raises(Exception, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError):
        shard_items(make_items(2), 2, 2)


def test_rows_argument_selects_a_slice() -> None:
    items = make_items(10)
    def pick(text: str) -> list[str]:
        return [i.clip_id for part in parse_rows(text) for i in items[part]]

    assert pick("7:") == ["c7", "c8", "c9"]
    assert pick("2:4") == ["c2", "c3"]
    assert pick("1:2,8:") == ["c1", "c8", "c9"]
    for bad in ("5:2", "a:b", "-1:3", "1", "1:2,x"):
        with pytest.raises(Exception, match="rows"):
            parse_rows(bad)


def test_unknown_teacher_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--corpus", str(tmp_path / "c.csv"), "--teachers", "distillmos,pesq", "--out", str(tmp_path / "o.csv")])
    assert "unknown" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_cli_on_a_corpus_resumes_and_shards(tmp_path: Path) -> None:
    """The real command with the real DNSMOS teacher on a 3-file user corpus."""
    rng = np.random.default_rng(0)
    for i in range(3):
        n = 220_800  # 9.2 s at 24 kHz: just over one DNSMOS window, so one window per file
        tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(n) / 24000)
        sf.write(tmp_path / f"f{i}.wav", (tone + 0.01 * rng.standard_normal(n)).astype(np.float32), 24000)
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("path,mos\nf0.wav,4.5\nf1.wav,\nf2.wav,2\n")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "train.label", "--corpus", str(corpus), "--teachers", "dnsmos",
               "--out", str(tmp_path / "labels.csv"), "--cache", str(tmp_path / "cache"),
               "--audio-dir", str(tmp_path / "audio"), *extra]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True)

    first = run("--shard", "0/2")
    assert "1 clips not labelled yet" in first.stderr  # f1 belongs to shard 1, not run yet
    second = run("--shard", "1/2")
    assert "wrote 3 rows" in second.stderr and "(1 scored, 0 cached)" in second.stderr
    rerun = run()
    assert "(0 scored, 3 cached)" in rerun.stderr
    rows = read_csv(tmp_path / "labels.csv")
    assert [Path(r["clip_id"]).name for r in rows] == ["f0.wav", "f1.wav", "f2.wav"]
    assert all(1.0 <= float(r["ovrl"]) <= 5.0 and r["mos"] == "" for r in rows)
    assert len(list((tmp_path / "audio").glob("*.npy"))) == 3
    one_shard = run("--shard", "1/2", "--assemble")  # a shard's rows only, though all are cached
    assert "wrote 1 rows" in one_shard.stderr
    assert [Path(r["clip_id"]).name for r in read_csv(tmp_path / "labels.csv")] == ["f1.wav"]


def test_imported_labels_spare_the_teacher_and_stored_audio_is_written(tmp_path: Path) -> None:
    first = CountingTeacher()
    first_dns = DnsmosLike("dnsmos1")
    cache = LabelCache(tmp_path / "old")
    label(make_items(6), [first, first_dns], cache, audio_dir=None)
    cache.close()
    out = tmp_path / "committed.csv"
    assemble(make_items(6), ["distillmos", "dnsmos1"], LabelCache(tmp_path / "old"), out)
    # a fresh machine: empty cache, the committed CSV, and one clip the CSV does not hold
    fresh = LabelCache(tmp_path / "new")
    assert import_labels([out], ["distillmos", "dnsmos1"], fresh) == 12
    assert import_labels([out], ["distillmos", "dnsmos1"], fresh) == 0, "nothing twice"
    teacher = CountingTeacher()
    label(make_items(7), [teacher], fresh, audio_dir=tmp_path / "audio")
    assert len(teacher.scored) == 1 and len(list((tmp_path / "audio").glob("*.npy"))) == 7
    again = tmp_path / "again.csv"
    assemble(make_items(6), ["distillmos", "dnsmos1"], fresh, again)
    assert read_csv(again) == read_csv(out)


def test_render_only_stores_audio_and_lists_clips_without_labels(tmp_path: Path) -> None:
    items = make_items(3)
    cache = LabelCache(tmp_path / "cache")
    label(items, [], cache, audio_dir=tmp_path / "audio")
    assert len(list((tmp_path / "audio").glob("*.npy"))) == 3
    out = tmp_path / "out.csv"
    assert assemble(items, [], cache, out) == 0
    rows = read_csv(out)
    assert [r["clip_id"] for r in rows] == ["c0", "c1", "c2"] and all(r["sha256"] for r in rows)
    assert all(r["mos"] == "" for r in rows)
