"""Clean speech sources: level measurement, text generation, and (integration) the Debian
prompt sets and TTS engines, plus the bundled demo assets built from them."""
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.data import conversion, demo
from train.data.asterisk import ASTERISK_SPEAKERS, NON_SPEECH, asterisk_index
from train.data.conversion import convert_voice, converted_index
from train.data.joining import group_parts, pauses
from train.data.level import SAMPLE_RATE, active_rms, normalise_level, trim
from train.data.manifest import split_of
from train.data.speech import Utterance, find_utterance, list_utterances, load_utterance, utterance_samples
from train.data.tts import GRAMMAR, make_text, synthesise

# Shared by test runs: the first run decodes the it prompt set (~10 s), later runs reuse it.
CACHE = Path(os.environ.get("STREAMQA_TEST_SPEECH_CACHE",
                            Path(tempfile.gettempdir()) / "streamqa-test-speech"))
DEMO = Path(__file__).resolve().parents[1] / "streamqa" / "demo"


def test_active_rms_ignores_pauses():
    tone = 0.1 * np.sin(np.arange(SAMPLE_RATE) * 0.2)
    with_pauses = np.concatenate([tone, np.zeros(3 * SAMPLE_RATE), tone])
    assert active_rms(with_pauses) == pytest.approx(0.1 / np.sqrt(2), rel=0.02)
    assert active_rms(np.zeros(1000)) == 0.0
    assert active_rms(np.zeros(0)) == 0.0


def test_normalise_level_hits_target_and_never_clips():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SAMPLE_RATE) * 0.001).astype(np.float32)
    y = normalise_level(x)
    assert 20 * np.log10(active_rms(y)) == pytest.approx(-26.0, abs=0.05)
    spiky = np.zeros(SAMPLE_RATE, np.float32)
    spiky[::4000] = 1.0
    spiky[1:100] = 1e-4
    assert np.max(np.abs(normalise_level(spiky))) <= 0.99 + 1e-6
    assert not normalise_level(np.zeros(100, np.float32)).any()


def test_trim_keeps_margin():
    x = np.zeros(10000, np.float32)
    x[5000:6000] = 0.5
    assert len(trim(x)) == 1000 + 2 * 800
    assert len(trim(np.zeros(100, np.float32))) == 0


def test_non_speech_prompts_are_recognised():
    for name in ("beep", "beeperr", "ascending-2tone", "spy-jingle", "tt-monkeys",
                 "confbridge-begin-glorious-b"):
        assert NON_SPEECH.match(name)
    for name in ("tt-monkeysintro", "tt-weasels", "at-tone-time-exactly", "vm-youhave"):
        assert not NON_SPEECH.match(name)


def test_text_and_pauses_are_deterministic():
    for lang in ("en", "en-us", "de", "nl", "sv", "pl", "pt", "es", "it"):
        a = make_text(lang, np.random.default_rng(1))
        assert a == make_text(lang, np.random.default_rng(1))
        assert len(a.split()) >= 26
    assert make_text("de", np.random.default_rng(1)) != make_text("de", np.random.default_rng(2))
    p = pauses("ast-en-0001", 5)
    assert p == pauses("ast-en-0001", 5) and len(p) == 4
    assert all(0.2 * SAMPLE_RATE <= s <= 0.5 * SAMPLE_RATE for s in p)


def test_generated_text_pauses_and_grouping_are_pinned():
    """Byte for byte what the seeds gave before the sources were split into modules and the
    grammar into grammar.json: the cached TTS audio, the prompt groups and every label built
    on them depend on it. A change here is a new data set, not a refactoring."""
    langs = ("en", "en-us", "de", "nl", "sv", "pl", "pt", "es", "it", "ca", "cs", "fi")
    assert set(GRAMMAR) == {lang.split("-")[0] for lang in langs}
    texts = [make_text(lang, np.random.default_rng(seed), words)
             for lang in langs for seed in range(20) for words in (26, 10)]
    gaps = [pauses(f"ast-en-{i:04d}", 6) for i in range(20)]
    rng = np.random.default_rng(7)
    groups = group_parts("it", {f"p{i:03d}": int(rng.integers(3000, 300000)) for i in range(120)})
    assert make_text("de", np.random.default_rng(1), 10) == \
        "Der alte Bauer reparierte das Küchenfenster während des Sturms 81, 9490."
    assert pauses("ast-en-0001", 3) == [4019, 3577] and groups[0] == ["p012"]
    blob = json.dumps([texts, gaps, groups], ensure_ascii=False).encode()
    assert hashlib.sha256(blob).hexdigest() == "826f69326d3f5d5bb454eaa330e3a64be29d957a7267481546f1643c06a31852"


def test_unknown_ids_and_languages_are_clear_errors(tmp_path):
    with pytest.raises(KeyError):
        find_utterance("ast-en-9999", tmp_path)
    with pytest.raises(ValueError, match="fr"):
        list_utterances(tmp_path, langs=("fr",), tts=False)
    with pytest.raises(ValueError, match="kind"):
        load_utterance(Utterance("x", "s", "en", "vinyl", ()), tmp_path)


def test_user_utterance_loads_through_corpus_loader(tmp_path):
    path = tmp_path / "u.wav"
    sf.write(path, 0.3 * np.sin(np.arange(44100) * 0.05), 44100)
    u = find_utterance(f"user:{path}", tmp_path)
    assert u.kind == "user" and utterance_samples(u) == SAMPLE_RATE
    audio = load_utterance(u)
    assert audio.dtype == np.float32 and len(audio) == SAMPLE_RATE
    assert 20 * np.log10(active_rms(audio)) == pytest.approx(-26, abs=0.1)


@pytest.mark.integration
@pytest.mark.slow
def test_asterisk_listing_builds_long_single_speaker_utterances():
    utts = list_utterances(CACHE, langs=("it",), tts=False)
    assert utts == list_utterances(CACHE, langs=("it",), tts=False), "deterministic order"
    assert len(utts) > 80
    assert {u.speaker for u in utts} == {ASTERISK_SPEAKERS["it"]}
    assert len({u.id for u in utts}) == len(utts)
    parts = [p for u in utts for p in u.parts]
    assert len(parts) == len(set(parts)), "each prompt used once"
    assert not any(p.startswith("silence/") or NON_SPEECH.match(p.split("/")[-1])
                   for p in parts)
    for u in utts[:: max(1, len(utts) // 8)]:
        audio = load_utterance(u, CACHE)
        assert audio.dtype == np.float32 and len(audio) >= 7.68 * SAMPLE_RATE
        assert len(audio) == utterance_samples(u, CACHE)
        assert 20 * np.log10(active_rms(audio)) == pytest.approx(-26, abs=0.5)
        assert np.abs(audio).max() < 1
    assert find_utterance(utts[3].id, CACHE) == utts[3]


@pytest.mark.integration
@pytest.mark.parametrize("engine,voice,lang", [
    ("espeak-ng", "de+f2", "de"), ("flite", "kal", "en"), ("flite", "slt", "en"),
    ("festival", "pc_diphone", "it"),  # Latin-1 text
    ("festival", "czech_machac", "cs"),  # ISO-8859-2 text, 32 kHz output
])
def test_tts_engines_render_16k_speech(engine, voice, lang):
    rng = np.random.default_rng(0)
    text = make_text(lang, rng, 8)
    audio = synthesise(engine, voice, text, rng)
    assert audio.dtype == np.float32
    assert 1.5 * SAMPLE_RATE < len(audio) < 12 * SAMPLE_RATE
    assert active_rms(audio) > 0.01


def _median_pitch(audio: np.ndarray) -> float:
    import parselmouth

    f0 = parselmouth.Sound(audio.astype(np.float64), SAMPLE_RATE).to_pitch().selected_array["frequency"]
    return float(np.median(f0[f0 > 0]))


@pytest.mark.integration
@pytest.mark.slow
def test_voice_conversion_moves_the_pitch_and_keeps_the_duration():
    clean = load_utterance(list_utterances(CACHE, langs=("it",), tts=False)[0], CACHE)
    for target in (95.0, 260.0):
        assert abs(_median_pitch(clean) - target) > 0.3 * target, "a real move"
        out = convert_voice(clean, 1.0, target, seed=3)
        assert np.array_equal(out, convert_voice(clean, 1.0, target, seed=3)), "deterministic"
        assert not np.array_equal(out, convert_voice(clean, 1.0, target, seed=4))
        assert out.dtype == np.float32 and len(out) == len(clean)
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
        assert _median_pitch(out) == pytest.approx(target, rel=0.15)


@pytest.mark.integration
@pytest.mark.slow
def test_converted_voices_are_indexed_loaded_and_held_out_with_their_source(
        monkeypatch, tmp_path):
    sources = asterisk_index("it", CACHE, None)[:2]
    monkeypatch.setattr(conversion, "VOICE_CONVERSIONS", (("m200", 0.95, 200.0),))
    cache = tmp_path / "speech"
    (cache / "asterisk").mkdir(parents=True)
    (cache / "asterisk" / "it").symlink_to(CACHE / "asterisk" / "it")
    rows = converted_index(cache, sources, None)
    assert [r["id"] for r in rows] == [f"vc-m200-{s['id']}" for s in sources]
    index = cache / "index" / "converted.json"
    stamp = index.stat().st_mtime_ns
    assert converted_index(cache, sources, None) == rows and index.stat().st_mtime_ns == stamp
    u = find_utterance(rows[0]["id"], cache)
    assert (u.speaker, u.kind, u.parts[0]) == ("asterisk-carlo@m200", "converted", sources[0]["id"])
    audio = load_utterance(u, cache)
    assert len(audio) == utterance_samples(u, cache) == sources[0]["samples"]
    assert 20 * np.log10(active_rms(audio)) == pytest.approx(-26, abs=0.5)
    assert _median_pitch(audio) == pytest.approx(200, rel=0.1)
    assert split_of(u.speaker, ("flite-awb",), ("asterisk-carlo",)) == "test"


def test_bundled_demo_assets_match_the_schedule():
    schedule = json.loads((DEMO / "schedule.json").read_text())
    assert schedule["segments"] == demo.SEGMENTS
    segs = schedule["segments"]
    assert segs[0]["start"] == 0 and segs[-1]["end"] == 60
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:]))
    assert [s["loss"] for s in segs] == [0.0, 0.0, 0.15, 0.0]
    legs = {}
    for name in ("caller", "callee"):
        path = DEMO / schedule["legs"][name]
        assert path.stat().st_size < 1.5e6
        audio, sr = sf.read(path, dtype="float32")
        assert sr == SAMPLE_RATE and audio.ndim == 1 and len(audio) == 60 * SAMPLE_RATE
        legs[name] = audio
    frame = SAMPLE_RATE // 10
    power = {k: np.mean(v.reshape(-1, frame) ** 2, axis=1) for k, v in legs.items()}
    clean = np.r_[0:150, 450:600]
    talking = {k: p > 10 ** (-45 / 10) for k, p in power.items()}
    both = np.mean(talking["caller"][clean] & talking["callee"][clean])
    assert both < 0.05, "turn-taking: the legs rarely talk at once"
    assert talking["caller"][clean].mean() > 0.2 and talking["callee"][clean].mean() > 0.2
    for p in power.values():
        quiet_noisy = np.percentile(p[150:300], 10)
        assert 10 * np.log10(quiet_noisy) > -45, "noise baked in during 15-30 s"
