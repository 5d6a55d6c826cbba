"""The presence-row refit (train.presence_refit) and the signalling tones it adds (train.data.tones)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from train.data.degrade import add_noise
from train.data.tones import KINDS, SAMPLE_RATE, TONES, signalling_tone
from train.presence_refit import (
    bias_shift, fit_mlp, fit_row, judged, keep_flag, keep_record, keep_share, keep_speech, mlp_logits, presence_row, rates, row_logits, set_presence_row,
    vectors, with_presence_head,
)
from train.students import FAMILY, PRESENCE, Student


def _peaks(x: np.ndarray, count: int) -> list[float]:
    """The ``count`` strongest spectral peaks (Hz), each at least 30 Hz from a stronger one."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    found: list[float] = []
    for i in np.argsort(spec)[::-1]:
        if all(abs(freqs[i] - f) > 30 for f in found):
            found.append(float(freqs[i]))
        if len(found) == count:
            return sorted(found)
    return sorted(found)


@pytest.mark.parametrize("kind", sorted(TONES))
def test_each_tone_has_its_frequencies(kind):
    freqs, cadence = TONES[kind]
    x = signalling_tone(np.random.default_rng(1), 8 * SAMPLE_RATE, kind)
    assert np.max(np.abs(x)) <= len(freqs) + 1e-9
    for got, want in zip(_peaks(x, len(freqs)), sorted(freqs)):
        assert abs(got - want) <= 0.01 * want + 2  # within the 1 % error an exchange allows


def test_cadence_is_silent_when_off():
    x = signalling_tone(np.random.default_rng(2), 12 * SAMPLE_RATE, "ringback-na")  # 2 s on, 4 s off
    frames = np.abs(x).reshape(-1, SAMPLE_RATE // 10).max(axis=1)
    on = frames > 0.5
    assert 0.25 < on.mean() < 0.42  # a third of the time, give or take a partial period
    assert (frames[~on] == 0).all()


def test_dtmf_and_answer_tone():
    rng = np.random.default_rng(3)
    dtmf = signalling_tone(rng, 4 * SAMPLE_RATE, "dtmf")
    assert 0.2 < (np.abs(dtmf) > 0).mean() < 0.9  # digits with gaps
    answer = signalling_tone(rng, 2 * SAMPLE_RATE, "answer-v25")
    assert _peaks(answer, 1)[0] == pytest.approx(2100, abs=10)
    reversal = int(0.45 * SAMPLE_RATE)
    assert answer[reversal] == pytest.approx(-np.sin(2 * np.pi * 2100 * reversal / SAMPLE_RATE), abs=1e-9)


def test_every_kind_renders_and_unknown_is_refused():
    rng = np.random.default_rng(4)
    for kind in KINDS:
        assert np.abs(signalling_tone(rng, 8 * SAMPLE_RATE, kind)).max() > 0.5  # a whole cadence
    with pytest.raises(ValueError, match="unknown signalling tone"):
        signalling_tone(rng, SAMPLE_RATE, "howl")


def test_tones_as_a_noise_at_an_absolute_level():
    x = add_noise(np.zeros(4 * SAMPLE_RATE), np.random.default_rng(5), "tones", None, None, level_dbfs=-20.0)
    assert 20 * np.log10(np.sqrt(np.mean(x**2))) == pytest.approx(-20.0, abs=0.01)


def test_fit_row_separates_separable_classes():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(400, 8, generator=gen)
    y = (h[:, 0] + 0.5 * h[:, 3] > 0.3).float()
    row = fit_row(h, y, 1e-4, (torch.zeros(8), torch.zeros(())))
    assert (judged(row_logits(h, row)) == (y.numpy() > 0.5)).mean() > 0.98


def _tiny_student_scoring_three_clips():
    """A random ``xxxs`` student, three 2 s clips, their log energies and the outputs on them."""
    from train.distill import featurise

    torch.manual_seed(0)
    student = Student(FAMILY["xxxs"]).eval()
    clips = [np.random.default_rng(i).normal(0, 0.1, 16000 * 2).astype(np.float32) for i in range(3)]
    feats = featurise(student, clips)
    with torch.no_grad():
        before = student.forward_features(feats)
    return student, clips, feats, before


def test_a_new_presence_row_leaves_the_quality_outputs_alone():
    student, clips, feats, before = _tiny_student_scoring_three_clips()
    h, _ = vectors(student, clips)
    row = (torch.randn(student.cfg.head_hidden), torch.tensor(0.7))
    set_presence_row(student, row)
    with torch.no_grad():
        after = student.forward_features(feats)
    k = student.cfg.outputs.index(PRESENCE)
    others = [i for i in range(len(student.cfg.outputs)) if i != k]
    assert torch.equal(before[:, others], after[:, others])
    assert torch.allclose(after[:, k], h @ row[0] + row[1], atol=1e-5)
    assert torch.allclose(presence_row(student)[0], row[0]) and torch.allclose(presence_row(student)[1], row[1])


def test_rates_count_false_alarms_by_kind():
    speech = np.array([True, False, True, True, False])
    y = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    r = rates(speech, y, ["speech", "speech", "tones", "effect", "tones"])
    assert (r["speech_judged_speech"], r["speech_clips"], r["no_speech_false_alarms"]) == (1, 2, 2)
    assert r["false_alarms_by_kind"] == {"effect": {"false_alarms": 1, "clips": 1},
                                         "tones": {"false_alarms": 1, "clips": 2}}


def test_keep_speech_holds_the_speech_side_with_the_fewest_false_alarms():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(300, 4, generator=gen)
    y = (h[:, 0] + 0.8 * torch.randn(300, generator=gen) > 0).float()
    row = (torch.tensor([2.0, 0.0, 0.0, 0.0]), torch.tensor(-1.0))
    speech = y.numpy() > 0.5
    for hits in (int(speech.sum()) // 2, int(speech.sum()) - 3):
        moved = keep_speech(h, y, row, hits)
        assert torch.equal(moved[0], row[0])
        assert judged(row_logits(h, moved))[speech].sum() == hits  # exactly: one less bias and the last one is lost
        assert judged(row_logits(h, (moved[0], moved[1] - 1e-4)))[speech].sum() < hits


def test_the_cache_is_reused_only_for_the_same_checkpoint_bytes(tmp_path, monkeypatch):
    """Hidden vectors are the expensive part (20 min for the shipped model); a retrained
    student written to the same path must not pick up its predecessor's."""
    import train.presence_refit as refit
    from train.export import save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "student.pt"
    save_checkpoint(ckpt, Student(FAMILY["xxxs"]).eval(), {})
    calls = []

    def fake_split(student, rows, extra, split, audio_dir, speech_dir, kinds):
        calls.append(split)
        h = torch.randn(40, student.cfg.head_hidden)
        p = torch.randn(40, 2 * student.cfg.embed)
        return h, p, (h[:, 0] > 0).float(), ["speech" if v > 0 else "tones" for v in h[:, 0]]

    monkeypatch.setattr(refit, "load_split", fake_split)
    monkeypatch.setattr(refit, "merge_labels", lambda paths: [])
    args = [str(ckpt), "--out", str(tmp_path / "out.pt"), "--labels", "x.csv", "--extra", "train=0",
            "--cache", str(tmp_path / "hidden.pt")]
    refit.main(args)
    refit.main(args)
    assert calls == ["train", "val"]  # the second run read the cache
    save_checkpoint(ckpt, Student(FAMILY["xxxs"]).eval(), {"retrained": True})
    refit.main(args)
    assert calls == ["train", "val", "train", "val"]
    refit.main([*args, "--kinds", "siren,synth-music"])  # other renders: not the cached vectors
    assert calls == ["train", "val"] * 3
    from train.export import load_checkpoint

    meta = load_checkpoint(tmp_path / "out.pt")[1]
    assert meta["presence_refit"]["kinds"] == ["siren", "synth-music"]
    assert meta["training_data"].endswith("(sirens, synthetic tunes)")
    with pytest.raises(SystemExit):
        refit.main([*args, "--kinds", "siren,foghorn"])


def test_fit_mlp_separates_what_no_row_can():
    """Speech inside a ring of no-speech (|x| small): no linear row separates it, the MLP
    does; the standardisation folded into its first layer takes raw, offset inputs."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(600, 6, generator=gen) * 3.0 + 10.0
    y = ((x[:, :2] - 10.0).norm(dim=1) < 3.0).float()
    mlp = fit_mlp(x, y, 16)
    accuracy = (judged(mlp_logits(x, mlp)) == (y.numpy() > 0.5)).mean()
    row = fit_row(x - 10.0, y, 1e-4, (torch.zeros(6), torch.zeros(())))
    assert accuracy > 0.95 > (judged(row_logits(x - 10.0, row)) == (y.numpy() > 0.5)).mean()


def test_bias_shift_hears_exactly_the_asked_speech_clips():
    logits = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0])
    for hits in (1, 3, 5):
        assert int(judged(logits + bias_shift(logits, hits)).sum()) == hits


def test_a_presence_head_leaves_the_quality_outputs_alone_and_exports(tmp_path):
    """The MLP becomes the student's presence output (the ONNX graph included: the runtime
    reads it with no change); every other output keeps its value bit for bit."""
    from streamqa.model import Model
    from train.export import export_onnx
    from train.students import count_params

    student, clips, feats, before = _tiny_student_scoring_three_clips()
    _, pooled = vectors(student, clips)
    mlp = fit_mlp(pooled, torch.tensor([1.0, 0.0, 1.0]), 4)
    headed = with_presence_head(student, mlp)
    with torch.no_grad():
        after = headed.forward_features(feats)
    k = student.cfg.outputs.index(PRESENCE)
    others = [i for i in range(len(student.cfg.outputs)) if i != k]
    assert torch.equal(before[:, others], after[:, others])
    assert torch.allclose(after[:, k], mlp_logits(pooled, mlp), atol=1e-5)
    assert headed.cfg.presence_hidden == 4
    assert count_params(headed) == count_params(student) + (2 * student.cfg.embed + 1) * 4 + 4 + 1
    model = Model(export_onnx(headed, tmp_path / "headed.onnx", {}))
    audio = clips[0][None, :]
    scores, _ = model.step(audio, model.init_state(1, window_seconds=2.0))
    with torch.no_grad():
        expected = headed(torch.from_numpy(audio))
    assert np.allclose(scores, expected.numpy(), atol=1e-4)


def test_an_onnx_student_is_rebuilt_with_its_weights(tmp_path):
    """load_onnx_student inverts export_onnx: the same initializers and outputs once
    exported again (what lets a shipped model be refitted without its checkpoint)."""
    import onnx

    from streamqa.model import Model
    from train.export import export_onnx, load_onnx_student

    torch.manual_seed(3)
    student = Student(FAMILY["xs"]).eval()
    first = export_onnx(student, tmp_path / "a.onnx", {"teacher": "t", "val": {"pcc": 0.5}, "name": "streamqa-x"})
    rebuilt, meta = load_onnx_student(first)
    assert meta == {"teacher": "t", "val": {"pcc": 0.5}, "name": "streamqa-x"}
    second = export_onnx(rebuilt, tmp_path / "b.onnx", meta)
    weights = [{i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(f)).graph.initializer}
               for f in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    a, b = Model(first), Model(second)
    x = np.random.default_rng(0).normal(0, 0.1, (2, 16000)).astype(np.float32)
    assert np.array_equal(a.step(x, a.init_state(2))[0], b.step(x, b.init_state(2))[0])


def test_mlp_refit_writes_a_student_with_its_presence_head(tmp_path, monkeypatch):
    """``--mlp`` through the command line: the saved checkpoint has the head, records it
    (train.pipeline reruns the refit only when ``mlp`` differs), and with ``--keep-speech``
    hears as many train speech clips as the original row."""
    import json

    import train.presence_refit as refit
    from train.export import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "student.pt"
    save_checkpoint(ckpt, Student(FAMILY["xxxs"]).eval(), {"training_data": "x"})
    gen = torch.Generator().manual_seed(4)

    def fake_split(student, rows, extra, split, audio_dir, speech_dir, kinds):
        p = torch.randn(200, 2 * student.cfg.embed, generator=gen)
        h = torch.randn(200, student.cfg.head_hidden, generator=gen)
        y = (p[:, 0] > 0).float()
        return h, p, y, ["speech" if v > 0 else "music" for v in p[:, 0]]

    monkeypatch.setattr(refit, "load_split", fake_split)
    monkeypatch.setattr(refit, "merge_labels", lambda paths: [])
    out = tmp_path / "out.pt"
    refit.main([str(ckpt), "--out", str(out), "--labels", "x.csv", "--extra", "train=0", "--mlp", "8",
                "--keep-speech", "--json", str(tmp_path / "r.json")])
    student, meta = load_checkpoint(out)
    assert student.presence_head is not None and student.cfg.presence_hidden == 8
    assert meta["presence_refit"]["mlp"] == 8 and "speech-presence head" in meta["training_data"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["refit"]["train"]["speech_judged_speech"] >= report["original"]["train"]["speech_judged_speech"]
    with pytest.raises(SystemExit, match="MLP already"):
        refit.main([str(out), "--out", str(tmp_path / "again.pt"), "--labels", "x.csv", "--mlp", "8"])


def test_keep_speech_share_is_checked_and_recorded_as_before_when_whole():
    """A checkpoint refitted at the whole operating point records ``true`` and the bare flag,
    as before the share existed, so ``make train`` rebuilds the shipped metadata unchanged."""
    assert keep_share("0.998") == 0.998 and keep_share("1") == 1.0
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(argparse.ArgumentTypeError):
            keep_share(bad)
    assert (keep_record(1.0), keep_flag(1.0)) == (True, " --keep-speech")
    assert (keep_record(None), keep_flag(None)) == (False, "")
    assert (keep_record(0.998), keep_flag(0.998)) == (0.998, " --keep-speech 0.998")


def test_row_refit_hears_the_asked_share_of_the_original_speech_clips(tmp_path, monkeypatch):
    """``--keep-speech 0.9`` through the command line: the refitted row hears the smallest
    whole number of train speech clips at least 0.9 of what the original row heard."""
    import json
    import math

    import train.presence_refit as refit
    from train.export import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "student.pt"
    save_checkpoint(ckpt, Student(FAMILY["xxxs"]).eval(), {"training_data": "x"})
    gen = torch.Generator().manual_seed(5)

    def fake_split(student, rows, extra, split, audio_dir, speech_dir, kinds):
        h = torch.randn(400, student.cfg.head_hidden, generator=gen)
        y = (h[:, 0] + 0.5 * torch.randn(400, generator=gen) > 0).float()
        return h, torch.zeros(400, 2 * student.cfg.embed), y, ["speech" if v > 0.5 else "music" for v in y]

    monkeypatch.setattr(refit, "load_split", fake_split)
    monkeypatch.setattr(refit, "merge_labels", lambda paths: [])
    out = tmp_path / "out.pt"
    refit.main([str(ckpt), "--out", str(out), "--labels", "x.csv", "--extra", "train=0", "--keep-speech", "0.9",
                "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    heard = report["original"]["train"]["speech_judged_speech"]
    assert heard > 0
    assert report["refit"]["train"]["speech_judged_speech"] == math.ceil(0.9 * heard)
    meta = load_checkpoint(out)[1]
    assert meta["presence_refit"]["keep_speech"] == 0.9 and "--keep-speech 0.9 with" in meta["training_data"]
