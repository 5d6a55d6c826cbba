"""Clip manifests (speaker-held-out splits, CSV round trip, deterministic rendering) and
user corpus CSVs. Utterances here are small user WAV files, so no speech cache is needed."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.data.corpus import load_audio_16k, read_corpus_csv
from train.data.manifest import (CLIP_SAMPLES, FIELDS, ClipRow, build_manifest,
                                 extend_manifest, main, read_manifest, render_clip, split_of,
                                 write_manifest)
from train.data.level import SAMPLE_RATE
from train.data.speech import Utterance

SPEAKERS = ["asterisk-allison", "asterisk-carlo", "espeak-sv+m1", "espeak-sv+f2",
            "espeak-de+m1", "espeak-pl+f4", "flite-awb", "flite-slt", "flite-kal", "flite-rms"]


@pytest.fixture(scope="module")
def utterances(tmp_path_factory) -> list[Utterance]:
    """Three 8-10 s 'utterances' per speaker: harmonic tones at speaker-specific pitch."""
    d = tmp_path_factory.mktemp("utts")
    out = []
    for si, spk in enumerate(SPEAKERS):
        for k in range(3):
            n = int((8 + k) * SAMPLE_RATE)
            t = np.arange(n) / SAMPLE_RATE
            x = sum(np.sin(2 * np.pi * h * (100 + 15 * si) * t) / h for h in range(1, 8))
            x *= np.sin(2 * np.pi * 2.5 * t) > -0.2
            path = d / f"{spk}-{k}.wav"
            sf.write(path, 0.1 * x, SAMPLE_RATE, subtype="PCM_16")
            out.append(Utterance(f"user:{path}", spk, "xx", "user", (str(path),)))
    return out


def test_splits_hold_out_whole_speakers(utterances):
    rows = build_manifest(utterances, 300, seed=0)
    assert len(rows) == 300
    assert len({r.clip_id for r in rows}) == 300
    by_speaker: dict[str, set[str]] = {}
    for r in rows:
        by_speaker.setdefault(r.speaker, set()).add(r.split)
    assert all(len(s) == 1 for s in by_speaker.values()), by_speaker
    assert by_speaker["asterisk-carlo"] == {"test"}
    assert by_speaker["espeak-sv+m1"] == by_speaker["flite-awb"] == {"val"}
    assert by_speaker["asterisk-allison"] == {"train"}
    split_of_utt = {u.id: split_of(u.speaker, ("espeak-sv+*", "flite-awb"),
                                   ("asterisk-carlo", "espeak-pl+*", "flite-slt"))
                    for u in utterances}
    for r in rows:
        assert 0 <= r.offset <= 10 * SAMPLE_RATE - CLIP_SAMPLES
        for step in json.loads(r.chain):
            for talker in step.get("talkers", []):
                assert split_of_utt[talker] == r.split, "babble from another split"
    assert any("talkers" in r.chain for r in rows)


def test_a_converted_voice_is_held_out_with_its_source():
    val, test = ("espeak-sv+*", "flite-awb"), ("asterisk-carlo", "espeak-pl+*")
    assert split_of("asterisk-carlo@m95", val, test) == "test"
    assert split_of("espeak-sv+f2@m95", val, test) == "val"
    assert split_of("asterisk-allison@m95", val, test) == "train"
    assert split_of("asterisk-allison@m95", val, ("asterisk-allison@*",)) == "test"
    with pytest.raises(ValueError, match="both"):
        split_of("flite-awb@m95", val, ("*@m95",))


def test_build_manifest_is_deterministic_and_seeded(utterances):
    a = build_manifest(utterances, 50, seed=3)
    assert a == build_manifest(utterances, 50, seed=3)
    assert a != build_manifest(utterances, 50, seed=4)
    assert build_manifest(utterances, 0) == []
    custom = build_manifest(utterances, 60, val_speakers=["flite-*"], test_speakers=["espeak-*"])
    assert {r.split for r in custom if r.speaker.startswith("flite")} == {"val"}
    with pytest.raises(ValueError, match="both"):
        build_manifest(utterances, 10, val_speakers=["flite-*"], test_speakers=["flite-slt"])


def test_extending_keeps_every_row_and_adds_only_new_speakers(utterances):
    """Labels are cached per row, so growing a manifest must not touch the rows it has."""
    old_speakers = {"asterisk-allison", "asterisk-carlo", "espeak-sv+m1", "flite-kal"}
    base = build_manifest([u for u in utterances if u.speaker in old_speakers], 120, seed=2)
    added = extend_manifest(base, utterances, 200, seed=2)
    assert len(added) == 200
    assert {r.speaker for r in added} == set(SPEAKERS) - old_speakers
    for split in ("train", "val", "test"):
        n_old = sum(r.split == split for r in base)
        new_ids = sorted(r.clip_id for r in added if r.split == split)
        assert new_ids == [f"{split}-{j:06d}" for j in range(n_old, n_old + len(new_ids))]
    # New random streams: no new row repeats an old row's degradation.
    assert not {(r.chain, r.seed) for r in added} & {(r.chain, r.seed) for r in base}
    talkers = {t for r in added for step in json.loads(r.chain) for t in step.get("talkers", [])}
    assert talkers and all(t.split("/")[-1].rsplit("-", 1)[0] not in old_speakers
                           for t in talkers), "babble only from the new speakers"
    assert extend_manifest(base + added, utterances, 50, seed=2) == [], "nothing new to add"
    assert extend_manifest(base, utterances, 200, seed=2) == added, "deterministic"
    with pytest.raises(ValueError, match="gaps"):
        extend_manifest(base[1:], utterances, 10)


def test_manifest_csv_round_trip_and_bad_files(utterances, tmp_path):
    rows = build_manifest(utterances, 40, seed=1)
    path = tmp_path / "m" / "train.csv"
    write_manifest(rows, path)
    assert path.read_text().splitlines()[0] == ",".join(FIELDS)
    assert read_manifest(path) == rows
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,utt\n")
    with pytest.raises(ValueError, match="header"):
        read_manifest(bad)
    lines = path.read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + [lines[2] + ",extra"]))
    with pytest.raises(ValueError, match=":3:"):
        read_manifest(bad)
    r = rows[0]
    bad.write_text(",".join(FIELDS) + f"\n{r.clip_id},{r.utterance_id},{r.speaker},{r.lang},"
                   f"{r.split},notanumber,[],1\n")
    with pytest.raises(ValueError, match=":2:"):
        read_manifest(bad)


def _row(utt: Utterance, chain: list, seed: int = 5) -> ClipRow:
    return ClipRow("c", utt.id, utt.speaker, utt.lang, "train", 1234, json.dumps(chain), seed)


def test_render_clip_is_deterministic(utterances):
    from train.data import manifest

    chain = [{"op": "reverb", "rt60": 0.4},
             {"op": "noise", "kind": "babble", "snr_db": 5.0,
              "talkers": [utterances[3].id, utterances[7].id]},
             {"op": "packet_loss", "rate": 0.1, "burst": 2.0}]
    row = _row(utterances[0], chain)
    a = render_clip(row)
    manifest._load.cache_clear()
    b = render_clip(row)
    assert a.dtype == np.float32 and a.shape == (CLIP_SAMPLES,)
    assert a.tobytes() == b.tobytes()
    assert np.isfinite(a).all() and np.abs(a).max() <= 1
    clean = render_clip(_row(utterances[0], []))
    assert not np.array_equal(a, clean)
    short = _row(utterances[0], [])
    short = ClipRow(**{**short.__dict__, "offset": 9 * SAMPLE_RATE})
    tail = render_clip(short)
    assert not tail[-SAMPLE_RATE:].any(), "past the end: zero-padded, not an error"


def test_render_clip_speed_without_codecs(utterances):
    import time

    rows = [r for r in build_manifest(utterances, 60, seed=2) if '"codec"' not in r.chain]
    start = time.process_time()
    for r in rows:
        render_clip(r)
    assert (time.process_time() - start) / len(rows) < 0.15


@pytest.mark.integration
@pytest.mark.slow
def test_render_clip_with_ffmpeg_codecs_is_deterministic(utterances):
    for codec, rate in (("libopus", 12000), ("gsm", None), ("libmp3lame", 16000)):
        step = {"op": "codec", "codec": codec, **({"bitrate": rate} if rate else {})}
        row = _row(utterances[2], [{"op": "noise", "kind": "pink", "snr_db": 20.0}, step])
        assert render_clip(row).tobytes() == render_clip(row).tobytes()


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--clips", "--out", "--seed", "--cache", "--langs", "--no-tts", "--festival",
                "--extend", "--val-speakers", "--test-speakers"):
        assert opt in text


def test_cli_rejects_unknown_language(tmp_path, capsys):
    assert main(["--clips", "5", "--out", str(tmp_path), "--langs", "fr",
                 "--cache", str(tmp_path / "c")]) == 2
    assert "fr" in capsys.readouterr().err


# --- user corpora -----------------------------------------------------------------------------


def test_corpus_csv_with_and_without_header(tmp_path):
    (tmp_path / "a.csv").write_text("path,mos\nx.wav,3.5\n/abs/y.flac,\n\n# note\nsub/z.wav\n")
    assert read_corpus_csv(tmp_path / "a.csv") == [
        (tmp_path / "x.wav", 3.5), (Path("/abs/y.flac"), None), (tmp_path / "sub/z.wav", None)]
    (tmp_path / "b.csv").write_text("x.wav, 4\n")
    assert read_corpus_csv(tmp_path / "b.csv") == [(tmp_path / "x.wav", 4.0)]


@pytest.mark.parametrize("body,match", [
    ("path,mos\nx.wav,good\n", "not a number"),
    ("x.wav,nan\n", "not finite"),
    ("x.wav,3,extra\n", "fields"),
    ("ok.wav,3\n,2\n", ":2: empty path"),
])
def test_corpus_csv_bad_rows(tmp_path, body, match):
    (tmp_path / "c.csv").write_text(body)
    with pytest.raises(ValueError, match=match):
        read_corpus_csv(tmp_path / "c.csv")


def test_load_audio_16k_mixes_down_and_resamples(tmp_path):
    t = np.arange(48000) / 48000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 48000)
    audio = load_audio_16k(tmp_path / "s.flac")
    assert audio.dtype == np.float32 and len(audio) == 16000
    assert np.max(np.abs(audio[1000:-1000])) == pytest.approx(0.25, abs=0.01)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="junk.wav"):
        load_audio_16k(tmp_path / "junk.wav")
    with pytest.raises(ValueError, match="missing.wav"):
        load_audio_16k(tmp_path / "missing.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(ValueError, match="no audio"):
        load_audio_16k(tmp_path / "empty.wav")


def test_split_clips_and_recorded_noise_stay_in_their_split(utterances):
    from train.data.noises import noise_files

    rows = build_manifest(utterances, 0, seed=3, split_clips={"train": 40, "val": 10, "test": 20},
                          recorded_noise=True)
    assert [sum(r.split == s for r in rows) for s in ("train", "val", "test")] == [40, 10, 20]
    recorded = [(r.split, step["source"]) for r in rows for step in json.loads(r.chain)
                if step.get("kind") == "recorded"]
    assert recorded, "no recorded noise drawn"
    assert all(noise_files()[name][1] == split for split, name in recorded)
    plain = build_manifest(utterances, 0, seed=3, split_clips={"train": 40, "val": 10, "test": 20})
    assert [r.utterance_id for r in plain] == [r.utterance_id for r in rows], \
        "recorded noise changes only the noise steps"


def test_rows_without_speech_render_noise_alone_and_get_presence_zero(utterances, tmp_path):
    from train.data.manifest import NO_SPEECH, clean_speech_fraction, no_speech_rows, \
        write_presence_labels

    rows = no_speech_rows({"train": 12, "test": 3}, seed=1, first_index={"train": 5})
    assert [r.clip_id for r in rows][:2] == ["train-000005", "train-000006"]
    assert all(r.utterance_id == NO_SPEECH and r.split in ("train", "test") for r in rows)
    levels = []
    for r in rows:
        clip = render_clip(r)
        assert clip.shape == (CLIP_SAMPLES,) and np.isfinite(clip).all()
        levels.append(float(np.sqrt(np.mean(clip.astype(np.float64) ** 2))))
        assert clean_speech_fraction(r) == 0.0
    assert max(levels) > 1e-3, "some rows carry audible noise"
    speech = build_manifest(utterances, 6, seed=0)
    assert all(clean_speech_fraction(r) > 0.5 for r in speech)
    out = tmp_path / "train.speech.csv"
    assert write_presence_labels(speech[:3] + rows[:3], out) == 6
    lines = out.read_text().splitlines()
    assert lines[0] == "clip_id,split,speaker,speech"
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["1"] * 3 + ["0"] * 3


def test_top_up_adds_mild_real_voice_rows_and_music_once(utterances, monkeypatch):
    """The second extension: clean or lightly degraded clips of real voices already present
    (the top of the scale), then music alone; once only, after the rows without speech."""
    from types import SimpleNamespace

    import train.data.noises
    import train.data.voices
    from train.data.manifest import NO_SPEECH, no_speech_rows, top_up_rows

    real = {"flite-kal", "flite-rms", "asterisk-carlo"}
    monkeypatch.setattr(train.data.voices, "voice_sources",
                        lambda: [SimpleNamespace(voice=v) for v in sorted(real)])
    music = {"train": ["music:a", "sfx:hobbies/music/drum"], "test": ["music:b"], "val": ["music:c"]}
    monkeypatch.setattr(train.data.noises, "music_sources", lambda split: music[split])
    present = [u for u in utterances if u.speaker != "flite-rms"]
    base = build_manifest(present, 80, seed=5)
    base += no_speech_rows({"train": 3}, seed=5, first_index={"train": sum(r.split == "train" for r in base)},
                           kinds=("silence",))
    added = top_up_rows(base, utterances, mild_clips={"train": 40, "test": 5},
                        music_clips={"train": 6}, seed=5)
    speech, none = added[:-6], added[-6:]
    assert {r.speaker for r in speech if r.split == "train"} == {"flite-kal"}, "known real voices only"
    assert {r.speaker for r in speech if r.split == "test"} == {"asterisk-carlo"}
    chains = [json.loads(r.chain) for r in speech]
    assert all(len(c) <= 1 for c in chains) and sum(not c for c in chains) >= 5
    assert all(s.get("snr_db", 99) >= 25 for c in chains for s in c)
    assert all(r.utterance_id == NO_SPEECH for r in none)
    assert {json.loads(r.chain)[0]["source"] for r in none} <= set(music["train"])
    n_train = sum(r.split == "train" for r in base)
    assert [r.clip_id for r in added if r.split == "train"] == \
        [f"train-{j:06d}" for j in range(n_train, n_train + 46)]
    assert top_up_rows(base + added, utterances, mild_clips={"train": 40}, music_clips={}) == []
    assert top_up_rows(base, utterances, mild_clips={"train": 40, "test": 5},
                       music_clips={"train": 6}, seed=5) == added, "deterministic"


def test_even_rows_share_real_voices_evenly_once(utterances, monkeypatch):
    """More clips of the real voices present, each voice drawn about equally often however
    much speech it has; appended once, after the rows without speech."""
    from types import SimpleNamespace

    import train.data.voices
    from train.data.manifest import NO_SPEECH, even_rows, no_speech_rows

    real = {"flite-kal", "flite-rms", "asterisk-allison"}  # all three train voices
    monkeypatch.setattr(train.data.voices, "voice_sources",
                        lambda: [SimpleNamespace(voice=v) for v in sorted(real)])
    # flite-kal keeps one short utterance, the others three each: by seconds kal would get ~1/7
    present = [u for u in utterances if u.speaker != "flite-kal" or u.id.endswith("-0.wav")]
    base = build_manifest(present, 80, seed=5, split_clips={"train": 80, "val": 10, "test": 10})
    base += no_speech_rows({"train": 3}, seed=5, first_index={"train": sum(r.split == "train" for r in base)},
                           kinds=("silence",))
    added = even_rows(base, present, {"train": 600, "test": 9}, seed=5)
    assert {r.split for r in added} == {"train"}, "test's last row holds speech: nothing appended there"
    counts = {v: sum(r.speaker == v for r in added) for v in sorted(real)}
    assert sum(counts.values()) == 600 and all(170 <= c <= 230 for c in counts.values()), counts
    assert all(r.utterance_id != NO_SPEECH for r in added)
    n_train = sum(r.split == "train" for r in base)
    assert [r.clip_id for r in added] == [f"train-{j:06d}" for j in range(n_train, n_train + 600)]
    assert even_rows(base + added, present, {"train": 600}, seed=5) == [], "once only"
    assert even_rows(base, present, {"train": 600, "test": 9}, seed=5) == added, "deterministic"
