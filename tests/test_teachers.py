"""Teachers on real speech: ranges, noise sensitivity, parity with the reference packages, and the
XLS-R-SQA code path on a tiny random backbone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from train.teachers.dnsmos import CALIBRATION
import pytest
import soundfile as sf

from train.data.packages import PackageMissing, package_files
from train.data.asterisk import asterisk_dir
from train.teachers.base import TEACHER_NAMES, Teacher, check_clip, get_teacher, teacher_class

SEGMENT = 122_880
PROMPT = "demo-congrats.g722"
PROMPT_PACKAGE = "asterisk-core-sounds-en-g722"  # the Debian package that installs PROMPT
FFMPEG = "ffmpeg"  # the Debian package of the ffmpeg command


def installed_files(package: str) -> tuple[Path, ...]:
    """The files of a Debian package, as dpkg lists them; skips the test, naming the package,
    when it is not installed. Only absence skips: a package that is there but broken (its
    prompt gone, ffmpeg failing) still fails the test that needs it."""
    try:
        return package_files(package)
    except PackageMissing as missing:  # its text names the package and the apt-get line
        pytest.skip(str(missing))
    except FileNotFoundError:  # no dpkg on this system at all
        pytest.skip(f"no dpkg here to find the Debian package {package} (scripts/sysdeps.sh installs it)")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """7.68 s of a studio speech prompt (asterisk en), decoded at 16 kHz by ffmpeg."""
    commands = [p for p in installed_files(FFMPEG) if p.name == "ffmpeg" and p.parent.name == "bin"]
    assert commands, f"the {FFMPEG} package is installed but holds no bin/ffmpeg"
    ffmpeg = commands[0]
    installed_files(PROMPT_PACKAGE)
    prompt = asterisk_dir("en") / PROMPT
    assert prompt.is_file(), f"{PROMPT_PACKAGE} is installed but has no {PROMPT}"
    wav = tmp_path_factory.mktemp("speech") / "prompt.wav"
    subprocess.run(
        [str(ffmpeg), "-loglevel", "error", "-y", "-f", "g722", "-i", str(prompt),
         "-ar", "16000", "-ac", "1", str(wav)],
        check=True,
    )
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 16000
    return np.ascontiguousarray(audio[16000 : 16000 + SEGMENT])


@pytest.fixture(scope="module")
def noisy(speech: np.ndarray) -> np.ndarray:
    """The same speech with white noise at 0 dB SNR."""
    noise = np.random.default_rng(0).standard_normal(speech.size).astype(np.float32)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2))
    return speech + noise


@pytest.fixture(scope="module")
def distillmos() -> Teacher:
    return get_teacher("distillmos", threads=1)


@pytest.fixture(scope="module")
def dnsmos() -> Teacher:
    return get_teacher("dnsmos", threads=1)


@pytest.fixture(scope="module")
def dnsmos_scores(dnsmos: Teacher, speech: np.ndarray, noisy: np.ndarray) -> list[dict[str, float]]:
    """DNSMOS of [speech, noisy], computed once: six 9 s windows per clip are slow on one core."""
    return dnsmos.score_batch([speech, noisy])


def test_a_missing_system_package_skips_naming_it_and_a_present_one_is_used() -> None:
    with pytest.raises(pytest.skip.Exception, match="streamqa-no-such-package is not installed"):
        installed_files("streamqa-no-such-package")
    assert any(p.name == "dpkg" for p in installed_files("dpkg"))  # present: its files, no skip


def test_registry_knows_the_teachers_and_rejects_others() -> None:
    assert TEACHER_NAMES == ("distillmos", "dnsmos", "dnsmos1", "xlsr_sqa")
    assert teacher_class("dnsmos").outputs == ("sig", "bak", "ovrl")
    assert teacher_class("dnsmos1").outputs == ("sig", "bak", "ovrl")
    assert teacher_class("distillmos").outputs == ("mos",)
    with pytest.raises(ValueError, match="unknown teacher"):
        get_teacher("pesq")


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros((2, 100), np.float32), "1-D"), (np.zeros(0, np.float32), "empty"), (np.array([0.0, np.nan]), "NaN")],
)
def test_check_clip_rejects_bad_input(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_clip(bad, "t")


def test_dnsmos_windows_repeat_short_clips_like_speechmos() -> None:
    from train.teachers.dnsmos import WINDOW_SAMPLES, windows

    clip = np.arange(50_000, dtype=np.float32)
    w = windows(clip)
    # doubled twice to 200,000 samples (12.5 s): int(12 - 9.01) + 1 = 3 windows one second apart
    assert w.shape == (3, WINDOW_SAMPLES)
    np.testing.assert_array_equal(w[0, :50_000], clip)
    np.testing.assert_array_equal(w[0, 50_000:100_000], clip)
    np.testing.assert_array_equal(w[1, :1000], clip[16_000:17_000])
    assert windows(np.zeros(SEGMENT, np.float32)).shape[0] == 6
    assert windows(np.zeros(WINDOW_SAMPLES, np.float32)).shape[0] == 1


@pytest.mark.integration
def test_distillmos_scores_speech_high_and_noise_low(distillmos: Teacher, speech: np.ndarray, noisy: np.ndarray) -> None:
    clean_mos, noisy_mos = (r["mos"] for r in distillmos.score_batch([speech, noisy]))
    assert 3.5 <= clean_mos <= 5.0
    assert 1.0 <= noisy_mos < clean_mos - 1.0


@pytest.mark.integration
def test_distillmos_batch_equals_one_by_one(distillmos: Teacher, speech: np.ndarray, noisy: np.ndarray) -> None:
    clips = [speech, noisy, speech[:40_000]]
    together = [r["mos"] for r in distillmos.score_batch(clips)]
    alone = [distillmos.score_batch([c])[0]["mos"] for c in clips]
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_load_distillmos_model_is_the_shipped_network() -> None:
    from train.teachers.distillmos import load_distillmos_model

    model = load_distillmos_model()
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 4_133_226


@pytest.mark.slow
@pytest.mark.integration
def test_dnsmos_scores_speech_and_penalises_noise(dnsmos_scores: list[dict[str, float]]) -> None:
    clean, degraded = dnsmos_scores
    assert set(clean) == {"sig", "bak", "ovrl"}
    assert all(1.0 <= v <= 5.0 for v in (*clean.values(), *degraded.values()))
    assert clean["bak"] >= 3.5 and clean["ovrl"] >= 2.8
    assert degraded["bak"] < clean["bak"] - 1.0
    assert degraded["ovrl"] < clean["ovrl"] - 0.5


@pytest.mark.slow
@pytest.mark.integration
def test_dnsmos_equals_speechmos_run(
    dnsmos: Teacher, dnsmos_scores: list[dict[str, float]], speech: np.ndarray
) -> None:
    from speechmos import dnsmos as reference

    short = speech[:50_000]  # exercises speechmos's repeat-to-length
    for clip, got in [(speech, dnsmos_scores[0]), (short, dnsmos.score_batch([short])[0])]:
        want = reference.run(clip, 16000)
        for key in ("sig", "bak", "ovrl"):
            assert got[key] == pytest.approx(float(want[f"{key}_mos"]), abs=1e-3)


# --- XLS-R-SQA on a tiny random backbone --------------------------------------------------------


def _tiny_backbone(path: Path, layers: int = 3) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=True, feat_extract_norm="layer",
    )
    torch.manual_seed(0)
    Wav2Vec2Model(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_backbone(tmp_path_factory.mktemp("xlsr"))


@pytest.mark.parametrize("layers", [(2,), (1, 3)])
def test_xlsr_sqa_scores_with_tiny_backbone(tiny_checkpoint: Path, layers: tuple[int, ...]) -> None:
    teacher = get_teacher("xlsr_sqa", checkpoint=tiny_checkpoint, layers=layers, random_head=True)
    rng = np.random.default_rng(1)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (SEGMENT, SEGMENT, 30_000)]
    scores = teacher.score_batch(clips)
    assert len(scores) == 3 and all(set(s) == {"mos"} for s in scores)
    values = np.array([s["mos"] for s in scores])
    assert np.isfinite(values).all() and ((values >= 1.0) & (values <= 5.0)).all()
    np.testing.assert_allclose(values[2], teacher.score_batch([clips[2]])[0]["mos"], atol=1e-5)


def test_xlsr_sqa_runs_only_needed_layers_without_changing_features(tiny_checkpoint: Path) -> None:
    import torch
    from transformers import Wav2Vec2Model

    teacher = get_teacher("xlsr_sqa", checkpoint=tiny_checkpoint, layers=(1,), random_head=True)
    assert len(teacher.backbone.encoder.layers) == 2
    full = Wav2Vec2Model.from_pretrained(tiny_checkpoint, local_files_only=True).eval()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 16_000)).astype(np.float32))
    with torch.inference_mode():
        ours = teacher.backbone(x, output_hidden_states=True).hidden_states[1]
        want = full(x, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(ours, want)


def test_xlsr_sqa_refuses_untrained_head_unless_asked(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="random_head=True"):
        get_teacher("xlsr_sqa", checkpoint=tiny_checkpoint, layers=(1,))
    with pytest.raises(ValueError, match="outside"):
        get_teacher("xlsr_sqa", checkpoint=tiny_checkpoint, layers=(7,), random_head=True)


@pytest.mark.parametrize("layers", [(5,), (21,), (5, 21)])
def test_shipped_300m_heads_load_into_1024_wide_head(layers: tuple[int, ...]) -> None:
    from train.teachers.xlsr_sqa import build_head, shipped_head_path

    path = shipped_head_path(1024, layers, "full")
    assert path is not None and path.is_file()
    head = build_head(1024, layers, path)  # strict load: any shape mismatch raises
    assert not head.training
    with pytest.raises(RuntimeError):
        build_head(64, layers, path)
    assert shipped_head_path(64, layers) is None
    assert shipped_head_path(1024, (7,)) is None


def test_dnsmos_one_window_scores_the_first_window() -> None:
    """dnsmos1 equals full DNSMOS restricted to the first window, at a sixth of the cost."""
    from train.teachers.dnsmos import DnsmosOneWindowTeacher, DnsmosTeacher, windows

    rng = np.random.default_rng(3)
    clip = (rng.standard_normal(122_880) * 0.05).astype(np.float32)
    assert len(windows(clip)) == 6
    one = DnsmosOneWindowTeacher().score_batch([clip])[0]
    full = DnsmosTeacher()
    raw = full.session.run(None, {full._input: windows(clip)[:1]})[0][0]
    expected = {k: float(np.polyval(CALIBRATION[k], raw[i])) for i, k in enumerate(("sig", "bak", "ovrl"))}
    assert one == pytest.approx(expected, abs=1e-5)
