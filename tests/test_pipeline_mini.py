"""The training pipeline end to end, in miniature: data, teacher labels, distillation,
ONNX export, parity with torch and held-out evaluation through the runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None, reason="needs ffmpeg and espeak-ng")
def test_mini_pipeline(tmp_path):
    torch = pytest.importorskip("torch")
    speech = Path(os.environ.get("STREAMQA_TEST_SPEECH_CACHE", "/tmp/streamqa-test-speech"))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.pipeline", "--mini", "--out", str(run), "--cache", str(tmp_path / "cache"),
           "--labels", str(tmp_path / "labels"), "--speech-cache", str(speech), "--presence-refit", "train=6,val=3",
           "--hard-no-speech", "train=5"]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=1500)

    summary = json.loads((run / "summary.json").read_text())
    test = summary["xxs"]["test"]
    assert test["clips"] >= 3 and np.isfinite(test["mos"]["pcc"])
    for split in ("train", "val", "test"):
        for teacher, column in (("distillmos", 4), ("dnsmos1", 5)):
            lines = (tmp_path / "labels" / f"{split}.{teacher}.csv").read_text().splitlines()
            assert lines[0].startswith("clip_id,sha256,split,speaker,mos,sig,bak,ovrl")
            assert all(line.split(",")[column] for line in lines[1:])  # the teacher's own column is filled

    # The exported graph is the checkpoint: same scores on a held-out clip, streamed by hops.
    from streamqa.model import Model
    from train.export import load_checkpoint

    student, meta = load_checkpoint(run / "xxs" / "student.pt")
    assert meta["teacher"] == "distillmos+dnsmos1"
    assert meta["warp"] == 0.25 and summary["xxs"]["training"]["warp"] == 0.25  # the recipe's frequency warp
    # the presence row was refitted once, after training, and the card's data line says so
    assert meta["presence_refit"]["keep_speech"] and meta["presence_refit"]["extra"] == {"train": 6, "val": 3}
    refit = json.loads((run / "xxs" / "presence_refit.json").read_text())
    assert refit["refit"]["train"]["no_speech_clips"] >= 6
    assert "speech-presence row refitted" in summary["xxs"]["training"]["training_data"]
    # the hard rows without speech were rendered and trained on (their CSV is in the data line)
    hard = (tmp_path / "labels" / "train.hard_none.csv").read_text().splitlines()
    assert len(hard) == 6 and all(line.endswith(",0") for line in hard[1:])
    assert "train.hard_none.csv" in summary["xxs"]["training"]["training_data"]
    model = Model(Path(summary["xxs"]["onnx"]))
    clip = np.load(next((tmp_path / "cache" / "audio").glob("*.npy"))).astype(np.float32) / 32768
    state = model.init_state(1)
    for i in range(0, len(clip), 16000):
        onnx_scores, state = model.step(clip[None, i : i + 16000], state)
    with torch.no_grad():
        ref = student(torch.from_numpy(clip)[None]).numpy()
    np.testing.assert_allclose(onnx_scores, ref, atol=1e-4)

    # Evaluation narrowed to one voice scores exactly that voice's clips.
    from train.evaluate import evaluate_onnx

    labels = [tmp_path / "labels" / "test.distillmos.csv"]
    one = sorted(test["mos"]["by_speaker"])[0]
    narrowed = evaluate_onnx(Path(summary["xxs"]["onnx"]), labels, tmp_path / "cache" / "audio",
                             speakers=one)
    assert narrowed["speakers"] == one
    scored = test["mos"]["by_speaker"][one]["n"]  # the voice's clips judged to hold speech
    assert narrowed["clips"] >= scored
    if "mos" in narrowed:  # 3 or more scored: the same clips, and the rest judged no speech
        assert narrowed["mos"]["n"] == scored
        assert narrowed["mos"]["n"] + narrowed["mos"]["no_speech"] == narrowed["clips"]
    assert set(narrowed.get("mos", {}).get("by_speaker", {one: 0})) == {one}

    # Two models scored as their mean (an ensemble), by train.evaluate and benchmarks.ensembles.
    from benchmarks.ensembles import main as ensembles
    from train.distill import pearson
    from train.evaluate import clip_scores, select_rows
    from train.export import export_onnx
    from train.students import FAMILY, Student

    torch.manual_seed(0)
    other = export_onnx(Student(FAMILY["xxs"]).eval(), tmp_path / "random.onnx", {"teacher": "random-init (test)"})
    trained = Path(summary["xxs"]["onnx"])
    audio = tmp_path / "cache" / "audio"
    rows = select_rows(labels, "test")
    mean = (clip_scores(trained, rows, audio)["mos"] + clip_scores(other, rows, audio)["mos"]) / 2
    scored = np.isfinite(mean)  # a clip either model judged to hold no speech has no ensemble score
    assert scored.sum() >= 3
    expected = pearson(mean[scored], np.array([float(r["mos"]) for r in rows])[scored])
    assert evaluate_onnx([trained, other], labels, audio)["mos"]["pcc"] == pytest.approx(expected)
    out = tmp_path / "ensembles.json"
    ensembles([f"T={trained}", f"R={other}", "--split", "test", "--labels", str(labels[0]),
               "--audio-dir", str(audio), "--json", str(out)])
    result = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(result) == {"T", "R", "T+R"}
    assert result["T+R"]["mos"]["pcc"] == pytest.approx(expected)
    assert result["T"]["mos"]["pcc"] == pytest.approx(test["mos"]["pcc"])


def test_card_names_the_clips_its_figures_rest_on():
    """A card must not claim clips the model left unscored (judged to hold no speech)."""
    from train.pipeline import evaluated_on

    line = evaluated_on({"clips": 1900, "mos": {"n": 1880, "no_speech": 20, "pcc": 0.9}})
    assert line.startswith("1880 of 1900 held-out test clips") and "20 judged to hold no speech" in line
