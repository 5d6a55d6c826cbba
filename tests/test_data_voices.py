"""Real voices and recorded noises from Debian packages: located through dpkg, reservations
kept, whole voices held out, and (integration) one small voice decoded and indexed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from train.data.manifest import DEFAULT_TEST_SPEAKERS, DEFAULT_VAL_SPEAKERS, split_of
from train.data.noises import MUSIC_SPLITS, load_noise, noise_files, sources_of, spoken_effect
from train.data.packages import PackageMissing, package_dir, package_files
from train.data.level import SAMPLE_RATE
from train.data.speech import find_utterance, load_utterance
from train.data.voices import RESERVED, TUXPAINT, kde_lang, voice_index, voice_sources

pytestmark = pytest.mark.integration


def test_package_files_come_from_dpkg_not_from_links():
    root = package_dir("asterisk-core-sounds-en-g722", ".g722")
    assert root.name == "en_US_f_Allison"  # the real folder, not the sounds/en link
    assert all(p.is_file() for p in package_files("asterisk-core-sounds-en-g722"))
    with pytest.raises(PackageMissing, match="apt-get install"):
        package_files("streamqa-no-such-package")


def test_reserved_recordings_are_never_listed():
    sources = voice_sources()
    paths = [str(p) for s in sources for _, p in s.files]
    assert paths, "no real voice found"
    assert not [p for p in paths if "_desc_bg." in p or "_desc_el." in p]
    assert not [s for s in sources for pkg in s.packages
                if pkg.startswith(("asterisk-core-sounds-fr", "asterisk-core-sounds-ru"))]
    assert {(TUXPAINT, "bg"), (TUXPAINT, "el")} <= RESERVED
    assert not any(".whl" in p or "site-packages" in p for p in paths)


def test_kde_voices_merge_scripts_of_one_language():
    serbian = [p for p in package_files("ktuberling-data") if p.suffix == ".ogg" and "@" in str(p)]
    assert serbian and {kde_lang(p, "ktuberling-data") for p in serbian} == {"sr"}
    german = [p for p in package_files("klettres-data") if p.suffix == ".ogg" and "/de/" in str(p)]
    assert german and {kde_lang(p, "klettres-data") for p in german} == {"de"}


def test_real_voices_are_held_out_whole_in_val_and_test():
    sources = voice_sources()
    split = {s.voice: split_of(s.voice, DEFAULT_VAL_SPEAKERS, DEFAULT_TEST_SPEAKERS)
             for s in sources}
    test = [s for s in sources if split[s.voice] == "test"]
    val = [s for s in sources if split[s.voice] == "val"]
    assert len(test) >= 4 and len({s.lang for s in test}) >= 3
    assert len(val) >= 3
    # a language's Tux Paint and KDE voices are on one side (one person may have read both)
    by_lang: dict[str, set[str]] = {}
    for s in sources:
        if s.voice.startswith(("tuxpaint-", "kde-")):
            by_lang.setdefault(s.voice.split("-", 1)[1], set()).add(split[s.voice])
    assert all(len(v) == 1 for v in by_lang.values()), by_lang


def test_recorded_noises_belong_to_one_split_each():
    files = noise_files()
    for split in ("train", "val", "test"):
        names = sources_of(split)
        assert any(n.startswith("sfx:") for n in names), split
        assert any(n.startswith("music:") for n in names), split
    assert not any("_desc" in n for n in files)
    assert {f"music:{m}" for m in MUSIC_SPLITS} <= set(files)
    assert not [n for n in files if n.startswith("sfx:") and spoken_effect(n[4:])]
    audio = load_noise(sources_of("test")[0])
    assert audio.ndim == 1 and len(audio) > 0 and np.isfinite(audio).all()


@pytest.mark.slow
def test_a_voice_is_decoded_indexed_and_joined(tmp_path):
    source = next(s for s in voice_sources() if s.voice == "kde-nb")
    index = voice_index(source, tmp_path)
    info = index["info"]
    assert info["packages"] == ["klettres-data"] and info["lang"] == "nb"
    assert 0 < info["seconds"] < 120 and info["files"] <= len(source.files)
    assert 75 <= info["pitch_hz"] <= 400
    assert index == json.loads((tmp_path / "index" / "voice-kde-nb.json").read_text())
    assert voice_index(source, tmp_path) == index, "second call reads the cache"
    row = max(index["utterances"], key=lambda r: r["samples"])
    u = find_utterance(row["id"], tmp_path)
    audio = load_utterance(u, tmp_path)
    assert u.kind == "joined" and u.speaker == "kde-nb"
    assert len(audio) == row["samples"] and len(u.parts) > 1
    assert 0.01 < np.sqrt(np.mean(audio ** 2)) < 0.2
    assert len(audio) >= 4 * SAMPLE_RATE


def test_spoken_stamp_sounds_are_not_noise():
    for name in ("symbols/math/9_ro", "symbols/math/0", "symbols/faces/happy",
                 "symbols/alphabets/english/outlined/uppercase/K_outline_en_GB", "symbols/math/3_zh_tw",
                 "animals/mammals/dogs/dog_de", "animals/birds/owl_bg", "animals/birds/owl_el"):
        assert spoken_effect(name), name
    for name in ("animals/mammals/bears/bear", "food/fruit/apple_red", "town/roadsigns/xing_ped",
                 "vehicles/emergency/firetruck"):
        assert not spoken_effect(name), name
