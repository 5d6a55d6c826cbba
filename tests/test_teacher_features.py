"""Distill-MOS's pooled vectors as a second training target: extraction, the compact file,
and the student learning them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.teacher_features import (FeatureTeacher, extract, load_store, merge, save_store,  # noqa: E402
                                    targets_for)


def _speechy(seed: int) -> np.ndarray:
    """7.68 s of a voiced, syllable-modulated tone in noise: enough for the teacher to score."""
    rng = np.random.default_rng(seed)
    t = np.arange(122880) / 16000
    f0 = 110 + 40 * seed
    voiced = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12))
    return (0.1 * voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def teacher() -> FeatureTeacher:
    return FeatureTeacher()


def test_the_vector_is_the_one_the_teachers_score_is_read_from(teacher):
    clips = np.stack([_speechy(0), _speechy(1)])
    vectors, scores = teacher(clips)
    head = teacher.head
    with torch.no_grad():
        again = 1 + 4 * torch.sigmoid(head(torch.from_numpy(vectors))).reshape(-1).numpy()
    assert vectors.shape == (2, 200)
    assert again == pytest.approx(scores, abs=1e-5)


def test_extraction_resumes_and_keeps_the_teachers_own_scores(teacher, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for i in range(3):
        clip = _speechy(i)
        np.save(audio / f"sha{i}.npy", np.round(clip * 32768).astype(np.int16))
        rows.append({"clip_id": f"c{i}", "sha256": f"sha{i}", "mos": "3.0"})
    store = tmp_path / "s.npz"
    assert extract(rows[:2], store, audio, teacher, batch=2, save_every=2, log=lambda _: None) == 2
    assert extract(rows, store, audio, teacher, batch=2, save_every=2, log=lambda _: None) == 1  # only the new one
    shas, feats, scores = load_store(store)
    assert shas == ["sha0", "sha1", "sha2"] and feats.shape == (3, 200) and feats.dtype == np.float16
    alone = teacher(np.stack([np.load(audio / "sha2.npy").astype(np.float32) / 32768]))[1]
    assert scores[2] == pytest.approx(alone[0], abs=1e-5)


def test_the_merged_file_keeps_the_main_components_and_marks_clips_it_lacks(tmp_path):
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((4, 200))
    vectors = rng.standard_normal((300, 4)) @ basis + 0.01 * rng.standard_normal((300, 200))
    shas = [f"{i:04d}" for i in range(300)]
    save_store(tmp_path / "shard0of2.npz", shas[:150], vectors[:150], np.ones(150))
    save_store(tmp_path / "shard1of2.npz", shas[150:], vectors[150:], np.ones(150))
    summary = merge(sorted(tmp_path.glob("shard*.npz")), tmp_path / "m.npz", components=8)
    assert summary["clips"] == 300 and summary["explained"] > 0.9  # four directions hold nearly all of it
    targets = targets_for(tmp_path / "m.npz", ["0007", "missing", "0299"])
    assert targets.shape == (3, 8)
    assert torch.isnan(targets[1]).all() and torch.isfinite(targets[[0, 2]]).all()
    every = targets_for(tmp_path / "m.npz", shas)
    assert float(every.pow(2).mean()) == pytest.approx(1.0, rel=1e-3)
    assert merge(sorted(tmp_path.glob("shard*.npz")), tmp_path / "few.npz", 8, only={"0001", "0200", "x"})["clips"] == 2


def test_a_student_learns_the_vectors_and_clips_without_one_do_not_count(tmp_path, monkeypatch):
    import dataclasses

    from train.distill import LabelledSet, _FeatureModel, init_feature_norm, masked_mse, train
    from train.students import FAMILY, Student

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    torch.manual_seed(0)
    student = Student(dataclasses.replace(FAMILY["xxs"], dropout=0.0))
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(48, student.cfg.n_bands, 64, generator=g) - 6
    targets = torch.rand(48, len(student.cfg.outputs), generator=g) * 4 + 1
    targets[:, student.cfg.outputs.index("speech")] = 1.0
    level = torch.randn(48, 6, 1, generator=g)
    feats[:, :6] += level  # each clip's level in six bands: something its pooled vector can carry
    aux = level[:, :, 0].clone()
    aux[40:] = math.nan  # eight clips without a vector
    data = LabelledSet([f"c{i}" for i in range(48)], ["s"] * 48, feats, targets, aux)
    init_feature_norm(student, feats)
    ckpt = tmp_path / "run.partial.pt"
    train(student, data, None, epochs=15, batch=8, lr=3e-3, seed=0, gain_db=0.0, feature_weight=1.0,
          checkpoint=ckpt, device="cpu", log=lambda _: None)
    state = torch.load(ckpt, weights_only=True)
    assert state["run"]["aux_clips"] == 40 and set(state["aux"]) == {"weight", "bias"}
    model = _FeatureModel(student.eval(), 6)
    model.aux.load_state_dict(state["aux"])
    with torch.no_grad():
        _, predicted = model(feats)
    known = aux[:40]
    spread = float(masked_mse(known.mean(0).expand_as(known), known))  # the error of always guessing the mean
    assert float(masked_mse(predicted[:40], known)) < 0.5 * spread


def test_agreement_leaves_out_clips_either_side_did_not_score():
    from benchmarks.reference_audio import agreement

    pred = np.array([1.0, 2.0, np.nan, 4.0, 3.0])
    target = np.array([1.1, 2.1, 3.0, np.nan, 2.9])
    got = agreement(pred, target)
    assert got["n"] == 3 and got["pcc"] == pytest.approx(np.corrcoef([1, 2, 3], [1.1, 2.1, 2.9])[0, 1])
