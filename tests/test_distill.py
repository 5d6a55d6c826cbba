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


def _labelled(n: int, seed: int, *, human: bool = False):
    """A synthetic training set for the ``xxs`` student: log energies and every label (or only
    ``mos``, as human ratings are)."""
    from train.distill import LabelledSet
    from train.students import FAMILY

    cfg = FAMILY["xxs"]
    g = torch.Generator().manual_seed(seed)
    targets = torch.rand(n, len(cfg.outputs), generator=g) * 4 + 1
    targets[:, cfg.outputs.index("speech")] = (targets[:, 0] > 3).float()
    if human:
        targets[:, 1:] = math.nan
    feats = torch.randn(n, cfg.n_bands, 64, generator=g) - 6
    return LabelledSet([f"c{i}" for i in range(n)], ["s"] * n, feats, targets)


def _fit(batch: int, device: str, out=None) -> dict:
    """Four epochs of the ``xxs`` student on 32 synthetic clips with every augmentation on;
    the weights after training (written to ``out`` by rank 0 under torch.distributed).
    Dropout is off: its masks come from each process's own torch generator."""
    import dataclasses

    from train.distill import init_feature_norm, train
    from train.students import FAMILY, Student

    torch.manual_seed(0)
    student = Student(dataclasses.replace(FAMILY["xxs"], dropout=0.0))
    data = _labelled(32, 1)
    init_feature_norm(student, data.feats)
    train(student, data, None, epochs=4, batch=batch, lr=3e-3, seed=5, human=_labelled(10, 2, human=True),
          human_ratio=0.25, gain_db=6.0, warp=0.1, device=device, log=lambda *_: None)
    weights = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
    if out is not None and torch.distributed.get_rank() == 0:
        torch.save(weights, out)
    return weights


class _FirstForward(Exception):
    pass


def test_every_batch_target_and_parameter_is_on_the_chosen_device(monkeypatch):
    """On "meta", a device every torch build has, anything left on the CPU shows."""
    from train.distill import Augment, epoch_batches, train
    from train.students import FAMILY, Student

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    meta = torch.device("meta")
    aug = Augment(_labelled(10, 2, human=True), 0.25, 6.0, 0.1)
    gen = torch.Generator().manual_seed(0)
    batches = list(epoch_batches(_labelled(32, 1), aug, batch=8, steps=4, gen=gen, device=meta))
    assert len(batches) == 4
    for x, y in batches:
        assert x.device == meta and y.device == meta
        assert x.shape[0] == y.shape[0] == 8
    seen = []

    def record(module, args):
        if isinstance(module, Student):
            return
        seen.append((args[0].device, {p.device for p in module.parameters()}))
        raise _FirstForward

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        with pytest.raises(_FirstForward):
            train(Student(FAMILY["xxs"]), _labelled(32, 1), None, epochs=3, batch=8, lr=1e-3, seed=0,
                  human=aug.human, warp=0.1, device="meta")
    finally:
        hook.remove()
    assert seen == [(meta, {meta})]


def _rank(rank: int, port: int, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        _fit(4, "cpu", out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_train_as_one_process_with_the_global_batch(tmp_path, monkeypatch):
    """DDP averages the two ranks' gradients, each of a half batch (same label count), which
    is the gradient of the whole batch; the draws are shared out so that each clip gets the
    same augmentation, hence the same weights up to float rounding."""
    import socket

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks.pt"
    torch.multiprocessing.spawn(_rank, args=(port, str(out)), nprocs=2)
    ranks = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    single = _fit(8, "cpu")
    half = _fit(4, "cpu")

    def gap(a: dict, b: dict) -> dict[str, float]:
        # The attention-logit bias (proj.bias[-1]) cancels in the softmax: its gradient is
        # float noise, which Adam scales up to full steps, and it changes no output.
        a, b = dict(a), dict(b)
        a["proj.bias"], b["proj.bias"] = a["proj.bias"][:-1], b["proj.bias"][:-1]
        return {k: (a[k] - b[k]).abs().max().item() for k in a}

    assert max(gap(ranks, single).values()) < 1e-4, gap(ranks, single)
    assert max(gap(half, single).values()) > 1e-2, "the comparison can tell a different batch apart"
