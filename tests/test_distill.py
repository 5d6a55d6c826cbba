"""Distillation pieces that need no data: label merging, masked loss, exact level change."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from train.device import leave_ranks  # noqa: E402
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


def _fit(batch: int, device: str, out=None, balance_bins: int = 0) -> dict:
    """Four epochs of the ``xxs`` student on 32 synthetic clips with every augmentation on
    (and label balancing with ``balance_bins``); the weights after training (written to
    ``out`` by rank 0 under torch.distributed). Dropout is off: its masks come from each
    process's own torch generator."""
    import dataclasses

    from train.distill import init_feature_norm, train
    from train.students import FAMILY, Student

    torch.manual_seed(0)
    student = Student(dataclasses.replace(FAMILY["xxs"], dropout=0.0))
    data = _labelled(32, 1)
    init_feature_norm(student, data.feats)
    train(student, data, None, epochs=4, batch=batch, lr=3e-3, seed=5, human=_labelled(10, 2, human=True),
          human_ratio=0.25, gain_db=6.0, warp=0.1, balance_bins=balance_bins, balance_cap=3.0, device=device,
          log=lambda *_: None)
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
    for x, y, a in batches:
        assert x.device == meta and y.device == meta and a is None
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


def _exit_rank() -> None:
    """End a spawned rank whose work is saved without the interpreter's teardown: even after
    the ranks left together (leave_ranks), gloo's threads still abort a process at exit now
    and then ("terminate called without an active exception", 1 of 5 fresh-clone runs),
    which spawn reports as a failed test though every result is on disk."""
    import os

    os._exit(0)


def _rank(rank: int, port: int, out: str, balance_bins: int) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        _fit(4, "cpu", out, balance_bins)
        leave_ranks()
        _exit_rank()
    finally:
        if torch.distributed.is_initialized():  # a rank that failed: leave without waiting
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize("balance_bins", [0, 4])
def test_two_gloo_ranks_train_as_one_process_with_the_global_batch(tmp_path, monkeypatch, balance_bins):
    """DDP averages the two ranks' gradients, each of a half batch (same label count), which
    is the gradient of the whole batch; the draws (the balanced draw of clips too) are shared
    out so that each clip gets the same augmentation, hence the same weights up to float
    rounding."""
    import socket

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks.pt"
    torch.multiprocessing.spawn(_rank, args=(port, str(out), balance_bins), nprocs=2)
    ranks = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    single = _fit(8, "cpu", balance_bins=balance_bins)
    half = _fit(4, "cpu", balance_bins=balance_bins)

    def gap(a: dict, b: dict) -> dict[str, float]:
        # The attention-logit bias (proj.bias[-1]) cancels in the softmax: its gradient is
        # float noise, which Adam scales up to full steps, and it changes no output.
        a, b = dict(a), dict(b)
        a["proj.bias"], b["proj.bias"] = a["proj.bias"][:-1], b["proj.bias"][:-1]
        return {k: (a[k] - b[k]).abs().max().item() for k in a}

    assert max(gap(ranks, single).values()) < 1e-4, gap(ranks, single)
    assert max(gap(half, single).values()) > 1e-2, "the comparison can tell a different batch apart"


def _skewed(n_mid: int = 100, n_top: int = 3):
    """``xxs`` clips whose ``mos`` labels crowd the middle (2.4-2.6) with ``n_top`` rare clips
    at 4.5 and one clip without a ``mos`` label; every ``mos`` label is distinct, so a batch's
    targets tell which clips it drew."""
    data = _labelled(n_mid + n_top + 1, 3)
    mos = torch.cat([torch.linspace(2.4, 2.6, n_mid), 4.5 + torch.arange(n_top) * 1e-3, torch.tensor([math.nan])])
    data.targets[:, 0] = mos
    return data


def test_balance_weights_favour_the_rare_top_within_the_cap():
    from train.distill import balance_weights

    data = _skewed()
    w = balance_weights(data.targets[:, 0], bins=4, cap=10.0)
    mid, top, unlabelled = w[:100], w[100:103], w[103]
    assert torch.all(mid == mid[0]) and torch.all(top == top[0])
    assert top[0] / mid[0] == pytest.approx(10.0)  # 100/3 uncapped: the cap holds it at 10x
    assert unlabelled == pytest.approx(w[:103].mean().item())
    uncapped = balance_weights(data.targets[:, 0], bins=4, cap=1000.0)
    assert uncapped[100] / uncapped[0] == pytest.approx(100 / 3)
    with pytest.raises(ValueError):
        balance_weights(torch.full((3,), math.nan), bins=4)


def test_voice_balance_weights_draw_real_voices_evenly_and_keep_their_share():
    from train.distill import voice_balance_weights

    # a big voice of 90 clips, a small one of 9, one of 1; 40 TTS clips and 10 without speech
    speakers = ["tuxpaint-es"] * 90 + ["kde-nb"] * 9 + ["kde-tn"] + ["espeak-pl"] * 40 + ["none"] * 10
    w = voice_balance_weights(speakers, cap=20.0)
    big, small, single, rest = w[:90], w[90:99], w[99], w[100:]
    assert torch.all(rest == 1.0)  # TTS and no speech: drawn as under a shuffle
    assert w[:100].sum().item() == pytest.approx(100.0)  # the real voices keep their share
    assert small.sum() / big.sum() == pytest.approx(1.0)  # uncapped: every voice drawn alike
    assert single / big[0] == pytest.approx(20.0)  # 90x by inverse count, held at the cap
    even = voice_balance_weights(speakers, cap=1.0)
    assert torch.allclose(even, torch.ones(len(speakers), dtype=torch.float64))  # cap 1: a plain shuffle
    with pytest.raises(ValueError):
        voice_balance_weights(["espeak-pl", "none"])


def test_voice_balance_weights_give_the_real_voices_the_share_asked_for(capsys):
    from train.distill import main, voice_balance_weights

    speakers = ["tuxpaint-es"] * 90 + ["kde-nb"] * 10 + ["espeak-pl"] * 300
    w = voice_balance_weights(speakers, cap=20.0, share=0.5)
    assert w[:100].sum().item() == pytest.approx(300.0)  # half of the draws, against a quarter of the clips
    assert w[:90].sum().item() == pytest.approx(w[90:100].sum().item())  # still even over voices
    assert torch.all(w[100:] == 1.0)
    for share in (0.0, 1.0):
        with pytest.raises(ValueError):
            voice_balance_weights(speakers, share=share)
    with pytest.raises(SystemExit):  # a share of no draw at all is a usage error
        main(["--labels", "x.csv", "--out", "y.pt", "--real-share", "0.5"])
    assert "add --balance-voices" in capsys.readouterr().err


def test_capped_voices_names_the_voices_the_cap_held_back():
    from train.distill import capped_voices, voice_balance_weights

    speakers = ["tuxpaint-es"] * 90 + ["kde-nb"] * 9 + ["kde-tn"] + ["kde-sl"] * 3 + ["espeak-pl"] * 40
    # cap 5: a voice under 90 / 5 = 18 clips is held at the cap, the largest first
    assert capped_voices(speakers, voice_balance_weights(speakers, cap=5.0), 5.0) == ["kde-nb", "kde-sl", "kde-tn"]
    # cap 100 binds for none: every voice is drawn alike and none is named
    assert capped_voices(speakers, voice_balance_weights(speakers, cap=100.0), 100.0) == []


def _drawn(data, weights, epochs: int, seed: int = 0) -> torch.Tensor:
    """How often each clip of ``data`` is drawn in ``epochs`` of ``epoch_batches`` (batch 8;
    one frame of features, which the draw does not look at, keeps it fast)."""
    from train.distill import Augment, LabelledSet, epoch_batches

    data = LabelledSet(data.ids, data.speakers, data.feats[:, :, :1].contiguous(), data.targets)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(data.ids))
    index = {v: i for i, v in enumerate(data.targets[:, 1].tolist())}  # the sig labels are distinct too
    steps = len(data.ids) // 8
    for _ in range(epochs):
        for _, y, _ in epoch_batches(data, Augment(gain_db=0.0), batch=8, steps=steps, gen=gen,
                                  device=torch.device("cpu"), weights=weights):
            for v in y[:, 1].tolist():
                counts[index[v]] += 1
    return counts


def test_balanced_epochs_draw_the_rare_high_mos_clips_more_often_within_the_cap():
    from train.distill import balance_weights

    data = _skewed()
    epochs = 300
    uniform = _drawn(data, None, epochs)
    balanced = _drawn(data, balance_weights(data.targets[:, 0], bins=4, cap=10.0), epochs)
    assert balanced.sum() == uniform.sum() == epochs * 13 * 8  # the epoch keeps its length
    assert uniform.max() <= epochs  # a shuffle: no clip more than once an epoch
    top, mid = balanced[100:103].mean() / epochs, balanced[:100].mean() / epochs
    assert top > 4 * uniform[100:103].mean() / epochs  # expected 10/1.3 ≈ 7.7 draws an epoch, against 1
    assert 7 < top / mid < 13  # the cap's 10x, not the 33x of the bare inverse density
    assert balanced[103] / epochs == pytest.approx(float(balanced[:103].mean()) / epochs, rel=0.35)


def test_without_balancing_an_epoch_is_the_plain_shuffle_of_before():
    """The default draw is untouched: one ``randperm`` of the clips from the seeded generator,
    as the code before ``--balance-labels`` drew it, so a default run's weights are unchanged."""
    from train.distill import Augment, epoch_batches

    data = _labelled(32, 1)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(7))
    ys = [y for _, y, _ in epoch_batches(data, Augment(gain_db=0.0), batch=8, steps=4,
                                      gen=torch.Generator().manual_seed(7), device=torch.device("cpu"))]
    assert torch.equal(torch.cat(ys), data.targets[order])


def _resumable_fit(checkpoint, *, resume: bool = False, epochs: int = 2, init_seed: int = 0, on_log=None):
    """The ``xxs`` student with dropout (so the process's own generator matters) trained with
    label balancing and a validation set, its state saved to ``checkpoint`` after each epoch."""
    import dataclasses

    from train.distill import init_feature_norm, train
    from train.students import FAMILY, Student

    torch.manual_seed(init_seed)
    student = Student(dataclasses.replace(FAMILY["xxs"], dropout=0.1))
    data = _skewed(80, 3)  # 10 steps an epoch on two ranks: OneCycleLR needs more than 10 in all
    init_feature_norm(student, data.feats)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if on_log is not None:
            on_log(line)

    metrics = train(student, data, _labelled(12, 4), epochs=epochs, batch=4, lr=3e-3, seed=5, warp=0.1,
                    balance_bins=4, checkpoint=checkpoint, resume=resume, device="cpu", log=log)
    return {k: v.detach().clone() for k, v in student.state_dict().items()}, metrics, lines


def test_resume_after_an_epoch_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    torch.set_num_threads(1)
    straight_ckpt, snapshot = tmp_path / "a.partial.pt", tmp_path / "b.partial.pt"

    def keep_first_epoch(line: str) -> None:
        if line.startswith("epoch 2/2"):  # logged before epoch 2 is saved: the file holds epoch 1
            shutil.copy(straight_ckpt, snapshot)

    straight, metrics, lines = _resumable_fit(straight_ckpt, on_log=keep_first_epoch)
    assert torch.load(snapshot, weights_only=True)["epoch"] == 1
    assert torch.load(straight_ckpt, weights_only=True)["epoch"] == 2
    assert all("mos bias by teacher band: " in line for line in lines), lines
    # Another initialisation and global generator: everything must come from the saved state.
    resumed, resumed_metrics, resumed_lines = _resumable_fit(snapshot, resume=True, init_seed=1)
    assert resumed_lines[0].startswith("resumed from") and resumed_lines[1].startswith("epoch 2/2")
    assert resumed_metrics == metrics
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    fresh, _, _ = _resumable_fit(tmp_path / "c.partial.pt", init_seed=1)
    assert any(not torch.equal(straight[k], fresh[k]) for k in straight), "the init seed changes a fresh run"
    with pytest.raises(ValueError, match="epochs 2 there, 3 now"):
        _resumable_fit(snapshot, resume=True, epochs=3)


def _corpus(tmp_path, n: int = 12) -> tuple:
    """A label CSV of ``n`` train and 4 val clips of noise, their audio in a train.label cache."""
    import numpy as np

    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    lines = ["clip_id,sha256,split,speaker,mos,sig,bak,ovrl,speech"]
    for i in range(n + 4):
        np.save(audio / f"h{i}.npy", (rng.standard_normal(32000) * 3000 * (i % 3 + 1)).astype(np.int16))
        split = "train" if i < n else "val"
        lines.append(f"c{i},h{i},{split},s,{1.5 + 3 * i / (n + 4):.3f},3,3,3,1")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels, audio


def test_cli_records_balancing_keeps_no_partial_and_refuses_to_overwrite_one(tmp_path, monkeypatch):
    from train.distill import main, partial_path
    from train.export import load_checkpoint

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    labels, audio = _corpus(tmp_path)
    out = tmp_path / "student.pt"
    argv = ["--labels", str(labels), "--student", "xxs", "--out", str(out), "--audio-dir", str(audio),
            "--epochs", "1", "--batch", "4", "--threads", "1", "--device", "cpu"]
    main(argv + ["--balance-labels", "5", "--balance-cap", "4"])
    _, meta = load_checkpoint(out)
    assert meta["balance_labels"] == 5 and meta["balance_cap"] == 4.0
    assert "balanced over 5 bins" in meta["training_data"]
    assert not partial_path(out).exists()  # the finished checkpoint replaces it
    held_out = tmp_path / "test.labels.csv"  # a test split's file, handed over as train.pipeline does
    held_out.write_text("clip_id,sha256,split,speaker,mos\nt0,h0,test,s,3.0\n")
    main(argv + ["--out", str(tmp_path / "plain.pt"), "--labels", str(labels), str(held_out)])
    _, plain = load_checkpoint(tmp_path / "plain.pt")
    assert "balance_labels" not in plain and "balanced" not in plain["training_data"]
    assert plain["training_data"] == f"{len(labels.read_text().splitlines()) - 5} clips from labels.csv"
    partial_path(out).write_bytes(b"an unfinished run")
    with pytest.raises(SystemExit):
        main(argv)


def _rank_resumable(rank: int, port: int, checkpoint: str, snapshot: str, out: str, resume: bool) -> None:
    """One of two gloo ranks running :func:`_resumable_fit`; each rank's own generator starts
    apart (dropout differs per rank), and apart again when resuming, so only the saved
    per-rank states can make a resumed run match."""
    import os
    import shutil
    from pathlib import Path

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)

    def keep_first_epoch(line: str) -> None:
        if line.startswith("epoch 2/2"):
            shutil.copy(checkpoint, snapshot)

    try:
        weights, _, _ = _resumable_fit(Path(checkpoint), resume=resume, init_seed=rank + (10 if resume else 0),
                                       on_log=None if resume else keep_first_epoch)
        if rank == 0:
            torch.save(weights, out)
        leave_ranks()
        _exit_rank()
    finally:
        if torch.distributed.is_initialized():  # a rank that failed: leave without waiting
            torch.distributed.destroy_process_group()


def test_two_gloo_ranks_resume_to_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    snapshot = tmp_path / "snap.partial.pt"
    torch.multiprocessing.spawn(_rank_resumable, args=(port(), str(tmp_path / "a.partial.pt"), str(snapshot),
                                                       str(tmp_path / "straight.pt"), False), nprocs=2)
    assert len(torch.load(snapshot, weights_only=True)["torch_rng"]) == 2
    torch.multiprocessing.spawn(_rank_resumable, args=(port(), str(snapshot), "", str(tmp_path / "resumed.pt"), True),
                                nprocs=2)
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_leave_ranks_outside_torchrun_is_a_no_op():
    assert not torch.distributed.is_initialized()
    leave_ranks()  # no process group: nothing to wait for or destroy
    assert not torch.distributed.is_initialized()
