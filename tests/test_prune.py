"""Structured, head and magnitude pruning: exactness of the compressible Distill-MOS, MAC
counting, physical removal, Taylor importance, and the XLS-R-SQA (Wav2Vec2) code path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.compress_fixtures import synthetic_clips, tiny_distillmos_net, tiny_xlsr_net
from train.compress.clips import load_clips, random_crops
from train.compress.cost import count_macs, count_params
from train.compress.finetune import distil_layers, finetune, predict
from train.compress.groups import distillmos_groups
from train.compress.importance import taylor_importance
from train.compress.magnitude import apply_masks, magnitude_masks
from train.compress.nets import SEGMENT_SAMPLES, XlsrSqaNet
from train.compress.resume import StepCheckpoint, StoppedEarly
from train.compress.structured import extend_distillation, head_prune, iterative_prune, structured_prune

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    crops = synthetic_clips(6, 6400, seed=0)
    targets = predict(tiny_distillmos_net(), crops).astype(np.float32)
    return crops, targets, synthetic_clips(4, 16000, seed=1)


def test_compressible_net_equals_shipped_distillmos() -> None:
    from train.compress.nets import from_reference
    from train.teachers.distillmos import load_distillmos_model

    ref = load_distillmos_model()
    net = from_reference(ref)
    x = torch.from_numpy(synthetic_clips(2, 122_880, seed=3))
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x).reshape(-1), atol=1e-4)
    assert count_params(net) == count_params(ref) == 4_133_226


@pytest.mark.parametrize("prune", [False, True])
def test_mac_count_matches_flop_counter(data, prune: bool) -> None:
    net = tiny_distillmos_net()
    if prune:
        structured_prune(net, data[0], data[1], keep=0.5, batch=3, importance_batches=1, log=lambda s: None)
    x = torch.from_numpy(data[2][:1])
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        net(x)
    assert count_macs(net, x) == fc.get_total_flops() // 2


def test_structured_pruning_removes_units_physically(data) -> None:
    crops, targets, clips = data
    net = tiny_distillmos_net()
    before = count_params(net)
    structured_prune(net, crops, targets, keep=0.4, batch=3, importance_batches=1, log=lambda s: None)
    assert count_params(net) <= 0.4 * before
    ref = tiny_distillmos_net()
    shrunk = [a.weight.numel() < b.weight.numel() for a, b in zip(net.convs, ref.convs)]
    assert any(shrunk)
    assert all(c.weight.shape[0] == n.weight.shape[1] for c, n in zip(net.convs, net.convs[1:]))
    out = predict(net, clips)
    assert out.shape == (4,) and np.isfinite(out).all()
    assert count_macs(net, torch.zeros(1, 16000)) < count_macs(ref, torch.zeros(1, 16000))


def test_taylor_importance_of_a_dead_channel_is_zero(data) -> None:
    crops, targets, _ = data
    net = tiny_distillmos_net()
    with torch.no_grad():
        net.convs[2].weight[3].zero_()
        net.convs[2].bias[3] = 0.0
    groups = distillmos_groups(net, ("conv",), crops.shape[1])
    scores = taylor_importance(net, groups, crops, targets + 0.5, batches=2, batch=3)
    assert scores[2][3] == 0.0
    assert (scores[2][torch.arange(8) != 3] > 0).all()


def test_head_pruning_keeps_share_and_one_per_layer(data) -> None:
    crops, targets, clips = data
    net = head_prune(tiny_distillmos_net(), crops, targets, keep_heads=0.25, importance_batches=1, batch=3)
    heads = [layer.attn.heads for layer in net.layers]
    assert heads == [1, 1]
    assert net.layers[0].attn.q.out_features == 8 and net.layers[0].attn.out.in_features == 8
    assert np.isfinite(predict(net, clips)).all()


def test_magnitude_masks_hold_through_finetuning(data) -> None:
    crops, targets, _ = data
    net = tiny_distillmos_net()
    masks = magnitude_masks(net, 0.7)
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((w == 0).sum()) for w in masks)
    assert abs(zeros / total - 0.7) < 0.01
    finetune(net, crops, targets, steps=2, batch=3, lr=1e-2, after_step=lambda: apply_masks(masks), log=lambda s: None)
    assert sum(int((w == 0).sum()) for w in masks) >= zeros
    with pytest.raises(ValueError):
        magnitude_masks(net, 1.0)


def test_xlsr_sqa_net_matches_teacher_and_prunes(tmp_path) -> None:
    from train.teachers.xlsr_sqa import XlsrSqaTeacher

    tiny = tiny_xlsr_net()
    tiny.backbone.save_pretrained(tmp_path)
    teacher = XlsrSqaTeacher(tmp_path, layers=(1, 2), random_head=True)
    net = XlsrSqaNet(teacher.backbone, teacher.head, (1, 2)).eval()
    clips = synthetic_clips(2, 16000, seed=4)
    expected = [s["mos"] for s in teacher.score_batch(list(clips))]
    np.testing.assert_allclose(predict(net, clips), expected, atol=1e-4)

    targets = predict(net, clips).astype(np.float32)
    before = count_params(net.backbone)
    structured_prune(net, clips, targets, keep=0.8, batch=2, importance_batches=1, log=lambda s: None)
    layer = net.backbone.encoder.layers[0]
    assert count_params(net.backbone) < before
    assert layer.attention.q_proj.out_features == layer.attention.num_heads * layer.attention.head_dim
    assert np.isfinite(predict(net, clips)).all()


def test_prune_help_documents_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "train.prune", "--help"], capture_output=True, text=True, check=True).stdout
    for opt in ("--method", "--keep", "--kinds", "--cost", "--rounds", "--stages", "--hidden-weight", "--extend", "--importance",
                "--importance-batches", "--steps", "--speed-perturb", "--save-every", "--stop-after",
                "--batch", "--lr", "--crop-seconds", "--train-clips", "--train-labels", "--crops-per-clip", "--cache", "--threads",
                "--device", "--seed", "--out"):
        assert opt in out
    assert "Taylor" in out


def test_output_importance_sees_units_where_the_loss_gradient_is_zero(data) -> None:
    """On the model that made the targets the distillation loss is zero and flat, so its
    gradient ranks nothing; the output criterion still tells a dead channel from live ones."""
    crops, targets, _ = data
    net = tiny_distillmos_net()
    with torch.no_grad():
        net.convs[2].weight[3].zero_()
        net.convs[2].bias[3] = 0.0
    exact = predict(net, crops).astype(np.float32)
    groups = distillmos_groups(net, ("conv",), crops.shape[1])
    by_loss = taylor_importance(net, groups, crops, exact, batches=2, batch=3)
    by_output = taylor_importance(net, groups, crops, exact, batches=2, batch=3, criterion="output")
    assert float(by_loss[2].max()) < 1e-8
    assert by_output[2][3] == 0.0 and (by_output[2][torch.arange(8) != 3] > 1e-8).all()


def test_iterative_pruning_meets_target_and_tracks_dropped_layers() -> None:
    """Stages shrink the model to the target; layer-wise distillation pairs each surviving
    layer with the teacher layer it came from, even after whole layers are removed."""
    clips = synthetic_clips(6, 16000, seed=2)
    net = tiny_distillmos_net()
    start = count_params(net)
    iterative_prune(net, clips, keep=0.4, stages=2, steps=4, batch=2, crop_samples=6400, lr=1e-3,
                    importance_batches=1, log=lambda s: None)
    assert count_params(net) <= 0.4 * start
    assert np.isfinite(predict(net, clips)).all()

    teacher = tiny_distillmos_net()
    student = tiny_distillmos_net()
    groups = distillmos_groups(student, ("layer",), 6400)
    groups[0].apply(torch.tensor([1]))  # drop layer 0: the survivor is teacher layer 1
    assert student.layers[0].source_index == 1
    losses = distil_layers(student, teacher, clips, steps=3, batch=2, crop_samples=6400, lr=1e-3,
                           log=lambda s: None)
    assert len(losses) == 3 and np.isfinite(losses).all()


def test_layerwise_distillation_runs_on_xlsr_sqa() -> None:
    """The Wav2Vec2 path: hidden states of the backbone's encoder layers are matched, and an
    unpruned copy of the teacher has zero loss."""
    import copy

    clips = synthetic_clips(4, 16000, seed=4)
    teacher = tiny_xlsr_net()
    student = copy.deepcopy(teacher)
    losses = distil_layers(student, teacher, clips, steps=1, batch=2, crop_samples=8000, lr=0.0,
                           log=lambda s: None)
    assert losses[0] < 1e-8


def test_extending_a_pruned_model_adds_to_its_stated_budget() -> None:
    clips = synthetic_clips(4, 16000, seed=6)
    teacher = tiny_distillmos_net()
    net = iterative_prune(tiny_distillmos_net(), clips, keep=0.5, stages=1, steps=2, batch=2, crop_samples=6400,
                          lr=1e-3, importance_batches=1, log=lambda s: None)
    before = [p.detach().clone() for p in net.parameters()]
    meta = {"method": "iterative", "keep": 0.5, "steps": 2}
    ext = {"from": "x.pt", "steps": 3, "batch": 2, "lr": 1e-3, "crop_seconds": 0.4, "train_clips": 4,
           "hidden_weight": 1.0}
    net, meta = extend_distillation(net, meta, teacher, clips, ext, log=lambda s: None)
    assert meta["steps"] == 5 and meta["extensions"] == [ext] and meta["method"] == "iterative"
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_extension_killed_and_resumed_ends_with_the_weights_of_one_straight_run(tmp_path: Path) -> None:
    """4 steps straight against 2 steps, a stop (the state saved, as at a kill) and a second
    call continuing from the saved state: the same weights, and the file is refused by a
    run with other settings."""
    clips = synthetic_clips(4, 16000, seed=7)
    pruned = iterative_prune(tiny_distillmos_net(), clips, keep=0.5, stages=1, steps=1, batch=2, crop_samples=6400,
                             lr=1e-3, importance_batches=1, log=lambda s: None)
    ext = {"from": "x.pt", "steps": 4, "batch": 2, "lr": 1e-3, "crop_seconds": 0.4, "train_clips": 4,
           "hidden_weight": 1.0, "speed_perturb": [0.9, 1.0]}

    def extend(checkpoint: StepCheckpoint | None, log=lambda s: None) -> torch.nn.Module:
        net = copy.deepcopy(pruned)
        extend_distillation(net, {"steps": 1}, tiny_distillmos_net(), clips, ext, checkpoint=checkpoint, log=log)
        return net

    straight = extend(None)
    path = tmp_path / "run.partial.pt.resume.pt"
    with pytest.raises(StoppedEarly):
        extend(StepCheckpoint(path, every=100, key=ext, stop_after=2))
    assert path.exists()
    with pytest.raises(ValueError, match="other settings"):
        extend(StepCheckpoint(path, key={**ext, "lr": 2e-3}))
    logged: list[str] = []
    resumed = extend(StepCheckpoint(path, key=ext), log=logged.append)
    assert any(line.startswith("resuming at step 2") for line in logged)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(pruned.parameters(), resumed.parameters()))


@pytest.mark.slow
def test_a_stopped_extension_run_resumes_from_its_file_and_removes_it(tmp_path: Path) -> None:
    """The command line: a run stopped after step 1 leaves OUT.resume.pt and no OUT (so
    train.prune_recipe reruns it); the same command again logs where it resumes, writes OUT
    with the whole budget and deletes the resume file."""
    from train.compress.checkpoint import load_pruned, save_pruned
    from train.compress.clips import clip_cache_path
    from train.compress.nets import load_reference_net
    from train.prune import main

    cache = tmp_path / "cache"
    cache.mkdir()
    np.savez(clip_cache_path(cache, "train", 2, 0), audio=synthetic_clips(2, SEGMENT_SAMPLES, seed=9),
             speakers=np.array(["a", "b"]))
    save_pruned(load_reference_net(), {"method": "iterative", "steps": 0}, tmp_path / "start.pt", log=lambda s: None)
    out = tmp_path / "next.partial.pt"
    argv = ["--method", "iterative", "--extend", str(tmp_path / "start.pt"), "--steps", "2", "--batch", "2",
            "--crop-seconds", "0.2", "--train-clips", "2", "--cache", str(cache), "--device", "cpu",
            "--out", str(out)]
    main([*argv, "--stop-after", "1"])
    resume = tmp_path / "next.partial.pt.resume.pt"
    assert resume.exists() and not out.exists()
    main(argv)
    assert out.exists() and not resume.exists()
    assert load_pruned(out)[1]["steps"] == 2


def test_train_clips_come_from_the_labellers_audio_cache(tmp_path: Path) -> None:
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    rng = np.random.default_rng(0)
    pcm = {h: rng.integers(-20000, 20000, size=SEGMENT_SAMPLES - 7 * i, dtype=np.int16) for i, h in enumerate("abc")}
    for h in "ab":  # "c" is listed but its audio was never cached
        np.save(audio_dir / f"{h}.npy", pcm[h])
    csv_path = tmp_path / "train.distillmos.csv"
    csv_path.write_text("clip_id,sha256,split,speaker,mos\n"
                        "t0,a,train,spk0,3.1\nt1,b,train,spk1,2.0\nt2,c,train,spk2,4.0\nv0,a,val,spk9,3.0\n")
    clips, speakers = load_clips("train", 2, labels_csv=csv_path, audio_dir=audio_dir, cache_dir=tmp_path / "c")
    assert sorted(speakers) == ["spk0", "spk1"] and clips.shape == (2, SEGMENT_SAMPLES)
    for clip, spk in zip(clips, speakers):
        want = pcm["a" if spk == "spk0" else "b"].astype(np.float32) / 32768.0
        np.testing.assert_array_equal(clip[: want.size], want)
        assert not clip[want.size :].any()  # short clips are zero-padded to the segment
    with pytest.raises(ValueError, match="only 2 train clips have cached audio"):
        load_clips("train", 3, labels_csv=csv_path, audio_dir=audio_dir, cache_dir=tmp_path / "c")


def test_french_and_russian_voices_of_the_train_split_are_drawn(tmp_path: Path) -> None:
    """The reserved recordings never reach a manifest, so no language is filtered here: the
    allowed fr/ru voices (Tux Paint, KDE) are drawn like the rest. A language filter once
    kept 1,865 of 10,592 labelled train clips out and stopped the streamqa-l recipe."""
    from train.data.manifest import ClipRow, write_manifest

    audio_dir, manifests = tmp_path / "audio", tmp_path / "manifests"
    audio_dir.mkdir()
    for h in "ab":
        np.save(audio_dir / f"{h}.npy", np.zeros(SEGMENT_SAMPLES, np.int16))
    # the split's manifest says which language each clip is in, as the real one does
    write_manifest([ClipRow("t0", "u0", "tuxpaint-fr", "fr", "train", 0, "[]", 1),
                    ClipRow("t1", "u1", "kde-ru", "ru", "train", 0, "[]", 2)], manifests / "train.csv")
    csv_path = tmp_path / "train.distillmos.csv"
    csv_path.write_text("clip_id,sha256,split,speaker,mos\nt0,a,train,tuxpaint-fr,3.1\nt1,b,train,kde-ru,2.0\n")
    _, speakers = load_clips("train", 2, labels_csv=csv_path, audio_dir=audio_dir, manifests=manifests,
                             cache_dir=tmp_path / "c")
    assert sorted(speakers) == ["kde-ru", "tuxpaint-fr"]


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * 16000 / len(x))


def test_speed_perturbed_crops_lower_the_pitch_by_the_drawn_factor() -> None:
    """A 1 kHz tone played at speed f comes out at f kHz, crops keep their length, and a
    range that would need more source audio than a clip has is refused."""
    t = np.arange(16000) / 16000
    clips = np.stack([np.sin(2 * np.pi * 1000 * t)] * 3).astype(np.float32)
    crops = random_crops(clips, 8000, 3, np.random.default_rng(0), speed=(0.8, 0.8))
    assert crops.shape == (3, 8000) and crops.dtype == np.float32
    assert [_peak_hz(c) for c in crops] == pytest.approx([800.0] * 3, abs=4)
    mixed = random_crops(clips, 8000, 3, np.random.default_rng(1), speed=(0.7, 1.0))
    assert all(690 <= _peak_hz(c) <= 1004 for c in mixed) and len({round(_peak_hz(c)) for c in mixed}) > 1
    plain = random_crops(clips, 8000, 3, np.random.default_rng(0))
    assert [_peak_hz(c) for c in plain] == pytest.approx([1000.0] * 3, abs=4)
    with pytest.raises(ValueError, match="speed range"):
        random_crops(clips, 16000, 1, np.random.default_rng(0), speed=(0.9, 1.1))


def test_speed_perturbation_is_recorded_with_the_extension() -> None:
    """The extension distils on perturbed crops (the same seed without perturbation ends
    elsewhere) and says so in the saved budget."""
    clips = synthetic_clips(4, 16000, seed=7)
    teacher = tiny_distillmos_net()
    ext = {"from": "x.pt", "steps": 2, "batch": 2, "lr": 1e-3, "crop_seconds": 0.4, "train_clips": 4,
           "hidden_weight": 1.0}
    # A student unlike the teacher (another seed): a copy of it would have zero loss and gradient.
    plain, _ = extend_distillation(tiny_distillmos_net(seed=1), {"method": "iterative", "steps": 2}, teacher, clips,
                                   ext, log=lambda s: None)
    ext = {**ext, "speed_perturb": [0.85, 1.0]}
    net, meta = extend_distillation(tiny_distillmos_net(seed=1), {"method": "iterative", "steps": 2}, teacher, clips,
                                    ext, log=lambda s: None)
    assert meta["extensions"][-1]["speed_perturb"] == [0.85, 1.0]
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), net.parameters()))
    assert np.isfinite(predict(net, clips)).all()


def test_speed_perturb_option_rejects_a_malformed_range(tmp_path: Path) -> None:
    """Refused before any clip is loaded: malformed, reversed, or faster than 7.68 s crops allow."""
    for bad in (["0.9"], ["1.1,0.9"], ["a,b"], ["0.9,1.1", "--crop-seconds", "7.68"]):
        out = subprocess.run([sys.executable, "-m", "train.prune", "--speed-perturb", *bad, "--out",
                              str(tmp_path / "x.pt")], capture_output=True, text=True)
        assert out.returncode == 2 and "--speed-perturb" in out.stderr


def test_device_option_defaults_to_cuda_when_there_is_one(tmp_path: Path) -> None:
    from train.device import pick_device
    from train.prune import build_parser

    args = build_parser().parse_args(["--out", str(tmp_path / "x.pt")])
    assert args.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert build_parser().parse_args(["--device", "cpu", "--out", "x.pt"]).device == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("abacus")
    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, "-m", "train.prune", "--device", "cuda", "--out", str(tmp_path / "x.pt")],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "--device" in out.stderr and "no CUDA device" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["iterative", "structured"])
def test_every_parameter_and_batch_is_on_the_chosen_device(tmp_path: Path, method: str) -> None:
    """Every module the run calls (pruned model and unpruned teacher) sees its parameters,
    buffers and inputs on --device, and the checkpoint is written on the CPU. A forward
    hook on every module records what each call saw."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    from train.compress.checkpoint import load_pruned
    from train.compress.clips import clip_cache_path
    from train.prune import main

    device = torch.device("cpu")
    cache = tmp_path / "cache"
    cache.mkdir()
    np.savez(clip_cache_path(cache, "train", 2, 0), audio=synthetic_clips(2, SEGMENT_SAMPLES, seed=8),
             speakers=np.array(["a", "b"]))
    seen: set[torch.device] = set()
    calls = []

    def record(module: torch.nn.Module, inputs: tuple) -> None:
        calls.append(type(module).__name__)
        seen.update(t.device for t in (*module.parameters(recurse=False), *module.buffers(recurse=False), *inputs)
                    if isinstance(t, torch.Tensor))

    handle = register_module_forward_pre_hook(record)
    try:
        main(["--method", method, "--keep", "0.8", "--stages", "1", "--rounds", "1", "--importance-batches", "1",
              "--steps", "1", "--batch", "2", "--crop-seconds", "0.2", "--train-clips", "2", "--crops-per-clip", "1",
              "--cache", str(cache), "--device", str(device), "--out", str(tmp_path / "p.pt")])
    finally:
        handle.remove()
    assert {"DistillMosNet", "Attention", "Conv2d", "Linear"} <= set(calls) and seen == {device}
    model, meta = load_pruned(tmp_path / "p.pt")
    assert {p.device for p in model.parameters()} == {torch.device("cpu")} and meta["params"] < meta["reference_params"]
