"""Distillation pieces that need no data: label merging, masked loss, exact level change."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from train.distill import _target, distill_loss, masked_mse, merge_labels, regain  # noqa: E402


def test_merge_labels_fills_missing_cells(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("clip_id,sha256,split,speaker,mos,sig,bak,ovrl\nc1,h1,train,s,3.5,,,\nc2,h2,train,s,2.0,,,\n")
    b.write_text("clip_id,sha256,split,speaker,mos,sig,bak,ovrl\nc1,h1,train,s,,3.1,4.0,2.9\nc3,h3,train,s,,1,1,1\n")
    rows = {r["clip_id"]: r for r in merge_labels([a, b])}
    assert rows["c1"]["mos"] == "3.5" and rows["c1"]["sig"] == "3.1"
    assert rows["c2"]["sig"] == "" and rows["c3"]["mos"] == ""


def test_masked_mse_ignores_unlabelled_outputs():
    pred = torch.tensor([[3.0, 1.0], [2.0, 5.0]])
    target = torch.tensor([[4.0, math.nan], [2.0, 3.0]])
    assert masked_mse(pred, target).item() == pytest.approx((1.0 + 0.0 + 4.0) / 3)


def test_regain_is_an_exact_level_change():
    from train.students import FAMILY, Student

    m = Student(FAMILY["xxs"])
    x = torch.randn(2, 6400) * 0.1
    cache = torch.zeros(2, 240)
    logmel, _ = m.log_energies(x, cache)
    louder, _ = m.log_energies(x * 10 ** (6 / 20), cache)
    torch.testing.assert_close(regain(logmel, torch.tensor([6.0, 6.0])), louder, atol=1e-3, rtol=1e-4)


def test_warp_bands_moves_a_spectral_peak_by_the_factor():
    from train.distill import warp_bands
    from train.students import band_edges

    centres = band_edges(40)[1:-1]
    x = torch.full((3, 40, 8), -10.0)
    x[:, 12, :] = 0.0  # one peak at band 12
    out = warp_bands(x, torch.tensor([1.0, 1.15, 1 / 1.15]))
    assert torch.equal(out[0], x[0])
    for row, factor in ((1, 1.15), (2, 1 / 1.15)):
        peak = int(out[row, :, 0].argmax())
        assert abs(centres[peak] - centres[12] * factor) < (centres[peak + 1] - centres[peak - 1]) / 2
        assert peak != 12


def test_presence_joins_the_loss_as_cross_entropy_and_masks_quality_labels_of_noise():
    outputs = ("mos", "bak", "speech")
    row_noise = {"mos": "2.0", "bak": "3.0", "speech": "0"}
    row_speech = {"mos": "4.0", "bak": "", "speech": "1"}
    t_noise, t_speech = _target(row_noise, outputs), _target(row_speech, outputs)
    assert math.isnan(t_noise[0]) and t_noise[1:] == [3.0, 0.0]
    assert t_speech[0] == 4.0 and math.isnan(t_speech[1]) and t_speech[2] == 1.0
    pred = torch.tensor([[3.0, 3.0, -2.0], [4.0, 1.0, 2.0]])
    target = torch.tensor([t_noise, t_speech])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([-2.0, 2.0]), torch.tensor([0.0, 1.0]))
    assert distill_loss(pred, target, outputs).item() == pytest.approx(bce.item(), abs=1e-6)
    assert distill_loss(pred[:, :2], target[:, :2], outputs[:2]).item() == 0.0
