"""streamqa-l: a pruned Distill-MOS under the runtime's step() contract (train.export_pruned)
and the resumable chain that rebuilds it (train.prune_recipe).

The slow tests share one export of a real pruned Distill-MOS (the shipped weights, structured
pruning to 25 % on a few synthetic clips: untrained after pruning, but of the real layout and
size), so what the runtime loads here has the shapes streamqa-l will have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.compress_fixtures import synthetic_clips
from train.compress.cost import count_params
from train.compress.finetune import predict
from train.compress.nets import SEGMENT_SAMPLES, load_reference_net
from train.export_pruned import (
    export_pruned,
    live_macs_per_second,
    scored_segment,
    ship_pruned,
    verify_export,
    window_scores_torch,
)
from train.compress.structured import structured_prune
from train.prune_recipe import RECIPE, clip_list, rebuild

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict, Path]:
    """(pruned net, its train.prune-style meta, its exported streamqa-l.onnx)."""
    net = load_reference_net()
    reference_params = count_params(net)
    crops = synthetic_clips(4, 16000, seed=0)
    structured_prune(net, crops, predict(net, crops).astype(np.float32), keep=0.25, rounds=1, importance_batches=1,
                     batch=2, criterion="output", log=lambda s: None)
    net.eval()  # pruning makes new batch-norm modules, in training mode
    meta = {"method": "structured", "keep": 0.25, "reference_params": reference_params, "steps": 0,
            "train_clips": 4, "params": count_params(net)}
    path = export_pruned(net, tmp_path_factory.mktemp("pruned") / "streamqa-l.onnx", meta)
    return net, meta, path


def test_scored_segment_is_the_audio_so_far_then_zeros() -> None:
    rng = np.random.default_rng(0)
    long = torch.from_numpy(rng.standard_normal((2, SEGMENT_SAMPLES + 6400)).astype(np.float32))
    seg = scored_segment(long, torch.tensor([[100.0], [SEGMENT_SAMPLES + 5000.0]]))
    assert seg.shape == (2, SEGMENT_SAMPLES)
    # 100 samples of audio: they come first, and the ring's older (non-zero) content is not used
    assert torch.equal(seg[0, :100], long[0, -100:]) and not seg[0, 100:].any()
    assert torch.equal(seg[1], long[1, -SEGMENT_SAMPLES:])  # a full window: its last 7.68 s
    short = torch.ones(1, 3200)  # a 0.2 s window, full: its audio, then zeros to 7.68 s
    seg = scored_segment(short, torch.tensor([[3200.0]]))
    assert seg[0, :3200].eq(1).all() and not seg[0, 3200:].any()


@pytest.mark.slow
def test_pruned_distillmos_loads_under_the_runtime_contract(pruned) -> None:
    from streamqa.model import Model

    net, _, path = pruned
    model = Model(path)
    info = model.info
    assert (info.name, info.outputs, info.teacher) == ("streamqa-l", ("mos",), "distillmos")
    assert (info.sample_rate, info.hop_samples, info.frame_samples, info.window_seconds) == (16000, 16000, 640, 7.68)
    assert info.params == count_params(net) < 0.3 * 4_133_226
    assert info.macs_per_second == live_macs_per_second(net)
    assert info.metadata["licence"] == "MIT" and "Microsoft" in info.metadata["attribution"]
    assert "Permission is hereby granted" in info.metadata["licence_text"]
    assert sorted(model.state_names) == ["fill", "ring"]
    state = model.init_state(3)
    assert state["ring"].shape == (3, 192, 640) and state["fill"].shape == (3, 1)
    assert model.init_state(1, 3.0)["ring"].shape == (1, 75, 640)  # the ring follows the window


@pytest.mark.slow
def test_runtime_steps_equal_torch_hop_by_hop(pruned) -> None:
    from streamqa.model import Model

    net, _, path = pruned
    # three streams (one digital silence), 10 s at the 1 s hop: partly filled windows, then full ones
    assert verify_export(net, path, seconds=10) < 1e-3
    # a 3 s window at a 0.4 s hop, batch 1
    model = Model(path)
    audio = synthetic_clips(1, 76800, seed=3)  # 4.8 s: 12 hops of 0.4 s
    hop = 6400
    state = model.init_state(1, 3.0)
    got = []
    for start in range(0, audio.shape[1], hop):
        scores, state = model.step(audio[:, start : start + hop], state)
        got.append(scores[0, 0])
    assert np.max(np.abs(np.array(got) - window_scores_torch(net, audio, hop, 48000)[0])) < 1e-3
    # a file shorter than the window is one step: Distill-MOS on that audio, zero-padded
    short = audio[0, :40960]  # 2.56 s, whole 40 ms frames (step() refuses a partial frame)
    padded = np.zeros((1, SEGMENT_SAMPLES), np.float32)
    padded[0, : short.size] = short
    assert model.step(short[None, :], model.init_state(1))[0][0, 0] == pytest.approx(float(predict(net, padded)[0]), abs=1e-3)


@pytest.mark.slow
def test_runtime_runs_it_without_torch(pruned) -> None:
    path = pruned[2]
    code = ("import sys, numpy as np\nfrom streamqa.model import Model\n"
            f"m = Model({str(path)!r})\ns = m.init_state(1)\n"
            "for _ in range(2):\n    y, s = m.step(np.zeros((1, 16000), np.float32), s)\n"
            "assert 'torch' not in sys.modules, 'the runtime imported torch'\nprint(float(y[0, 0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 1.0 <= float(out.stdout) <= 5.0


@pytest.mark.slow
def test_shipped_card_makes_it_selectable_by_name(pruned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamqa.model as model_mod
    import train.pipeline as pipeline
    from streamqa.cli import build_parser

    net, meta, path = pruned
    models, doc = tmp_path / "models", tmp_path / "models.md"
    models.mkdir()
    monkeypatch.setattr(pipeline, "MODELS_DIR", models)
    monkeypatch.setattr(model_mod, "MODELS_DIR", models)
    write_doc = pipeline.write_models_doc
    monkeypatch.setattr(pipeline, "write_models_doc", lambda: write_doc(doc))
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    # Held-out clips are scored as the runtime scores files, speech rule included, so they must
    # hold speech: whole windows of the demo call's clean stretches (streamqa/demo/schedule.json),
    # two voices, 64-80 % active under the level gate (this model has no speech output).
    # Synthetic bursts under loud noise are rightly judged "no speech" by that gate, and a card
    # is never given an accuracy that was not measured.
    demo = ROOT / "streamqa" / "demo"
    clips = [sf.read(demo / f"{leg}.flac", dtype="int16", start=int(at * 16000), frames=SEGMENT_SAMPLES)[0]
             for leg, at in (("caller", 0.0), ("callee", 6.0), ("caller", 52.0))]
    rows = ["clip_id,sha256,split,speaker,mos"]
    for i, clip in enumerate(clips):
        np.save(audio_dir / f"h{i}.npy", clip)
        rows.append(f"test-{i},h{i},test,voice{i},{2 + i}")
    labels = tmp_path / "test.distillmos.csv"
    labels.write_text("\n".join(rows) + "\n")
    # a test split without enough speech gives no accuracy: nothing is shipped
    np.save(audio_dir / "quiet.npy", np.zeros(SEGMENT_SAMPLES, np.int16))
    quiet = tmp_path / "quiet.distillmos.csv"
    quiet.write_text("clip_id,sha256,split,speaker,mos\n" + "".join(f"q-{i},quiet,test,v,3\n" for i in range(3)))
    with pytest.raises(ValueError, match="no MOS accuracy"):
        ship_pruned(path, net, meta, labels=[quiet], audio_dir=audio_dir, command="make streamqa-l")
    assert not list(models.iterdir())

    ship_pruned(path, net, meta, labels=[labels], audio_dir=audio_dir, command="make streamqa-l")
    card = json.loads((models / "streamqa-l.json").read_text())
    assert {"name", "file", "sha256", "params", "macs_per_second", "outputs", "teacher", "training_data",
            "accuracy", "evaluated_on", "command"} <= set(card)  # the students' card fields
    assert (card["outputs"], card["teacher"], card["licence"]) == (["mos"], "distillmos", "MIT")
    assert card["macs_per_second"] > card["macs_per_second_offline"] and card["streams_per_core"] > 0
    assert set(card["accuracy"]) == {"mos_pcc", "mos_srcc"} and card["evaluated_on"].startswith("3 of 3 held-out")
    assert all(np.isfinite(v) for v in card["accuracy"].values())
    assert "## streamqa-l" in doc.read_text()
    assert model_mod.resolve("streamqa-l") == models / "streamqa-l.onnx"
    assert model_mod.load_model("streamqa-l").info.name == "streamqa-l"  # sha256 checked against the card
    wav = tmp_path / "call.wav"
    sf.write(wav, clips[0], 16000, subtype="PCM_16")
    args = build_parser().parse_args(["score", "--model", "streamqa-l", "--json", str(wav)])
    assert args.func(args) == 0


def test_recipe_is_the_documented_chain_and_resumes(tmp_path: Path) -> None:
    lines: list[str] = []
    rebuild(tmp_path, [Path("labels.csv")], dry_run=True, log=lines.append)
    assert lines[0].endswith("about 4.9 h of one core left")
    doc = (ROOT / "docs" / "compression.md").read_text()
    assert all(f"{run.name}.pt" in doc or f"_{run.name.split('_full_')[-1]}:" in doc for run in RECIPE)
    planned = [line for line in lines if " -m train.prune " in line]
    assert len(planned) == len(RECIPE)
    for run, prev, line in zip(RECIPE[1:], RECIPE, planned[1:]):
        assert f"--extend {tmp_path / prev.name}.pt " in line and f"--lr {run.lr} " in line
    assert "--keep 0.25 --stages 4 --importance-batches 8 --steps 1000 --batch 2" in planned[0]
    assert "--steps 600 --batch 4 --lr 1.25e-5 --crop-seconds 7.68 --train-clips 10348" in planned[-1]
    assert all(f"--train-labels {tmp_path / 'train_clips.csv'} " in line for line in planned)
    for run in RECIPE[:3]:  # finished runs are skipped; the plan starts at the fourth
        (tmp_path / f"{run.name}.pt").write_bytes(b"")
    lines.clear()
    rebuild(tmp_path, [Path("labels.csv")], dry_run=True, log=lines.append)
    assert lines[0].startswith("3 of 8 runs done") and sum("skip" in line for line in lines) == 3
    assert f"--extend {tmp_path / RECIPE[2].name}.pt " in next(line for line in lines if " -m train.prune " in line)


def test_recipe_draws_from_the_train_rows_of_every_label_file(tmp_path: Path) -> None:
    base, real = tmp_path / "train.distillmos.csv", tmp_path / "train.real.distillmos.csv"
    base.write_text("clip_id,sha256,split,speaker,mos\nt-0,a,train,espeak,3\nt-1,b,train,flite,2\nv-0,c,val,kal,4\n")
    real.write_text("clip_id,sha256,split,speaker,mos\nt-9,z,train,tuxpaint-es,4.1\n")
    out = clip_list(tmp_path / "run", [base, real])
    assert out.read_text().splitlines() == ["clip_id,sha256,split,speaker", "t-0,a,train,espeak", "t-1,b,train,flite",
                                            "t-9,z,train,tuxpaint-es"]
    assert clip_list(tmp_path / "run", [base]) == out and "t-9" in out.read_text()  # written once: resumes draw alike
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        clip_list(tmp_path / "other", [tmp_path / "missing.csv"])
