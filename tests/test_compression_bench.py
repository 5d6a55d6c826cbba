"""The compression benchmark: contract fields, resumable rows, answers and plots (miniature)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.compression import FIELDS, StudyInputs, answers, build_parser, load_inputs, run_study, summarise, table
from tests.compress_fixtures import synthetic_clips, tiny_distillmos_net
from train.compress.checkpoint import save_pruned
from train.compress.clips import clip_cache_path
from train.compress.nets import SEGMENT_SAMPLES

torch.set_num_threads(1)


def _toy() -> StudyInputs:
    """A tiny random Distill-MOS-shaped reference, 8 one-second clips to measure on and 4 to
    crop: every method runs on it in seconds."""
    return StudyInputs(tiny_distillmos_net(0), "tiny-random-distillmos", "toy", synthetic_clips(8, 16000, seed=1),
                       synthetic_clips(4, 16000, seed=0))


def _study(tmp_path: Path, *options: str) -> dict:
    args = build_parser().parse_args(["--json", str(tmp_path / "c.json"), "--rows", str(tmp_path / "rows.jsonl"),
                                      "--cache", str(tmp_path / "cache"), "--crop-seconds", "0.4", "--steps", "2",
                                      "--repeats", "2", *options])
    return run_study(args, _toy(), log=lambda s: None)


def _row(method: str, params: int, macs: float, rtf: float, pcc: float, nonzero: int | None = None) -> dict:
    return {"model": method, "method": method, "ratio": (nonzero or params) / 1000, "params": params,
            "nonzero_params": nonzero or params, "macs_per_second": macs, "rtf_torch_1t": rtf, "rtf_ort_1t": rtf,
            "pcc_teacher": pcc, "srcc_teacher": pcc}


def test_summary_answers_in_numbers() -> None:
    rows = [
        _row("reference", 1000, 10e9, 0.10, 1.0),
        _row("structured", 500, 5e9, 0.05, 0.99),
        _row("structured", 100, 1e9, 0.01, 0.90),
        _row("magnitude", 1000, 10e9, 0.11, 0.98, nonzero=200),
        _row("distill", 50, 0.5e9, 0.005, 0.80),
        _row("distill", 1000, 8e9, 0.05, 0.95),
    ]
    s = summarise(rows)
    assert s["rtf_gain_per_gmacs_saved"]["structured"]["rtf_ort_1t"] == pytest.approx(0.01)
    assert s["sparsity_speedup_ort"]["0.80"] == pytest.approx(0.10 / 0.11)
    verdicts = {v["params"]: v["structured_better"] for v in s["structured_vs_distill"]}
    assert verdicts == {100: True, 500: True}
    assert "| reference |" in table(rows)
    text = answers(rows, s)
    assert "100 params: structured 0.900 vs distilled" in text and "sparsity 0.80: ONNX Runtime 0.91x" in text


@pytest.mark.slow
def test_mini_run_writes_contract_json_and_resumes(tmp_path: Path) -> None:
    options = ("--methods", "structured,magnitude", "--structured-keep", "0.5", "--sparsity", "0.5",
               "--plots", str(tmp_path))
    _study(tmp_path, *options)
    result = json.loads((tmp_path / "c.json").read_text())
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["reference", "structured", "magnitude"]
    for r in rows:
        assert set(FIELDS) <= set(r)
    ref = rows[0]
    assert ref["pcc_teacher"] == pytest.approx(1.0) and ref["ratio"] == 1.0
    assert rows[1]["params"] < ref["params"] and rows[1]["macs_per_second"] < ref["macs_per_second"]
    assert rows[2]["nonzero_params"] < rows[2]["params"] == ref["params"]
    assert (tmp_path / "compression_pcc_params.png").stat().st_size > 1000
    assert (tmp_path / "compression_rtf_macs.png").stat().st_size > 1000
    n_lines = len((tmp_path / "rows.jsonl").read_text().splitlines())
    _study(tmp_path, *options)  # every row is cached: nothing is recomputed
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == n_lines
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == rows


@pytest.mark.slow
def test_every_option_reaches_the_study(tmp_path: Path) -> None:
    """Each method's ratios, the budget, the crops and the outputs asked for on the command
    line are the ones the rows, the config, the caches and the files show."""
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- compression-results:start -->\nold\n<!-- compression-results:end -->\n")
    result = _study(tmp_path, "--methods", "heads,lowrank,distill", "--heads-keep", "0.5", "--lowrank-keep", "0.4,0.2",
                    "--students", "xxxs", "--steps", "3", "--batch", "2", "--lr", "1e-3", "--student-lr", "1e-2",
                    "--crop-seconds", "0.25", "--crops-per-clip", "3", "--importance-batches", "1", "--repeats", "1",
                    "--seed", "2", "--markdown", str(doc), "--plots", str(tmp_path / "plots"))
    rows = {(r["method"], str(r["setting"])): r for r in result["rows"]}
    assert sorted(rows) == [("distill", "xxxs"), ("heads", "0.5"), ("lowrank", "0.2"), ("lowrank", "0.4"),
                            ("reference", "1.0")]
    assert rows["heads", "0.5"]["heads_per_layer"] == [1, 1]  # half of 2 x 2 heads, one per layer
    assert rows["lowrank", "0.2"]["params"] < rows["lowrank", "0.4"]["params"] < rows["reference", "1.0"]["params"]
    assert rows["distill", "xxxs"]["model"] == "student-xxxs"
    assert all(r["finetune_steps"] == 3 for k, r in rows.items() if k[0] != "reference")
    config = result["config"]
    assert (config["steps"], config["batch"], config["seed"], config["repeats"]) == (3, 2, 2, 1)
    assert (config["train_crops"], config["crop_samples"]) == (4 * 3, 4000)
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(stored) == 5 and {r["run"] for r in stored} == {
        "toy-steps3-batch2-crop4000-n12-lr0.001-slr0.01-eval8-seed2"}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "ref_crops_toy_(12, 4000)_2.npy", "ref_eval_toy_(8, 16000)_2.npy"]
    text = doc.read_text()
    assert text.startswith("intro\n<!-- compression-results:start -->\n| method |") and "old" not in text
    assert "| lowrank | tiny-random-distillmos-lowrank0.2 |" in text and "**Structured pruning vs" in text
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"compression_pcc_params.png", "compression_rtf_macs.png"}


def test_inputs_are_distillmos_and_the_clips_of_the_test_and_train_splits(tmp_path: Path) -> None:
    """--eval-clips and --train-clips clips of the test and train splits, drawn with --seed
    and kept in --cache, and the shipped Distill-MOS as the reference."""
    cache = tmp_path / "cache"
    cache.mkdir()
    drawn = {split: synthetic_clips(n, SEGMENT_SAMPLES, seed=n) for split, n in (("test", 2), ("train", 3))}
    for split, clips in drawn.items():
        np.savez(clip_cache_path(cache, split, len(clips), 7), audio=clips, speakers=np.array(["s"] * len(clips)))
    args = build_parser().parse_args(["--json", str(tmp_path / "c.json"), "--cache", str(cache), "--eval-clips", "2",
                                      "--train-clips", "3", "--seed", "7"])
    inputs = load_inputs(args, log=lambda s: None)
    assert (inputs.name, inputs.label) == ("distill-mos-v7", "full")
    np.testing.assert_array_equal(inputs.eval_clips, drawn["test"])
    np.testing.assert_array_equal(inputs.train_clips, drawn["train"])
    assert sum(p.numel() for p in inputs.reference.parameters()) == 4_133_226


def test_markdown_replaces_only_the_marked_section(tmp_path: Path) -> None:
    from benchmarks.compression import write_markdown

    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- compression-results:start -->\nold\n<!-- compression-results:end -->\noutro\n")
    write_markdown(doc, "new table")
    assert doc.read_text() == "intro\n<!-- compression-results:start -->\nnew table\n<!-- compression-results:end -->\noutro\n"


@pytest.mark.slow
def test_saved_pruned_model_is_measured_next_to_the_reference(tmp_path: Path) -> None:
    """A model made by train.prune (here: iterative pruning of the mini reference) becomes a
    row named by its method, with its budget and a reference ORT time from the same run."""
    from train.compress.structured import iterative_prune

    net = iterative_prune(tiny_distillmos_net(0), synthetic_clips(4, 16000, seed=5), keep=0.5, stages=1, steps=2,
                          batch=2, crop_samples=6400, lr=1e-3, importance_batches=1, log=lambda s: None)
    meta = {"method": "iterative", "keep": 0.5, "steps": 2, "stages": 1}
    save_pruned(net, meta, tmp_path / "it.pt", log=lambda s: None)
    rows = _study(tmp_path, "--methods", "structured", "--structured-keep", "0.5", "--pruned", str(tmp_path / "it.pt"))["rows"]
    assert [r["method"] for r in rows] == ["reference", "structured", "iterative"]
    it = rows[2]
    assert it["budget"]["stages"] == 1 and it["finetune_steps"] == 2 and it["rtf_ort_1t_reference"] > 0
    assert it["ratio"] <= 0.5 and set(FIELDS) <= set(it)


def test_pruned_fit_reads_the_last_training_set_and_scores_agreement() -> None:
    import numpy as np

    from benchmarks.pruned_fit import fit, last_training_set

    base = {"train_clips": 1500, "steps": 1000}
    assert last_training_set(base) == (1500, None)
    extended = {**base, "extensions": [{"train_clips": 1500}, {"train_clips": 5480, "train_labels": "l/t.csv"}]}
    assert last_training_set(extended) == (5480, Path("l/t.csv"))
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    shifted = fit(ref + 0.5, ref)
    assert shifted["pcc"] == pytest.approx(1.0) and shifted["rmse"] == pytest.approx(0.5) and shifted["clips"] == 4
    assert fit(ref[::-1].copy(), ref)["srcc"] == pytest.approx(-1.0)


def test_pruned_fit_measures_each_model_on_its_own_training_clips_and_on_val(tmp_path: Path) -> None:
    """A saved copy of the reference fits it exactly on both sets; another model is measured
    on the first --clips clips of the set its last run trained on, and that set is read once."""
    from benchmarks.pruned_fit import build_parser as fit_parser
    from benchmarks.pruned_fit import measure

    cache = tmp_path / "cache"
    cache.mkdir()
    sets = {("val", 3, None): synthetic_clips(3, 16000, seed=1),
            ("train", 4, Path("l/t.csv")): synthetic_clips(4, 16000, seed=2),
            ("train", 5, None): synthetic_clips(5, 16000, seed=3)}
    for (split, n, labels), clips in sets.items():
        np.savez(clip_cache_path(cache, split, n, 0, labels), audio=clips, speakers=np.array(["s"] * n))
    same, other, again = tmp_path / "same.pt", tmp_path / "other.pt", tmp_path / "again.pt"
    save_pruned(tiny_distillmos_net(0), {"method": "iterative", "steps": 10, "train_clips": 1500,
                                         "extensions": [{"train_clips": 4, "train_labels": "l/t.csv"}]},
                same, log=lambda s: None)
    save_pruned(tiny_distillmos_net(1), {"method": "structured", "steps": 3, "train_clips": 5}, other, log=lambda s: None)
    save_pruned(tiny_distillmos_net(2), {"method": "structured", "steps": 4, "train_clips": 5}, again, log=lambda s: None)
    args = fit_parser().parse_args(["--pruned", str(same), str(other), str(again), "--json", str(tmp_path / "f.json"),
                                    "--clips", "2", "--val-clips", "3", "--cache", str(cache), "--seed", "0"])
    result = measure(args, tiny_distillmos_net(0), "toy", log=lambda s: None)
    assert json.loads((tmp_path / "f.json").read_text()) == result
    assert (result["reference"], result["val_clips"]) == ("toy", 3)
    exact, shifted, _ = result["rows"]
    assert exact["seen_set"] == {"train_clips": 4, "train_labels": "l/t.csv"} and exact["steps"] == 10
    assert shifted["seen_set"] == {"train_clips": 5, "train_labels": None} and shifted["steps"] == 3
    for part, clips in (("seen", 2), ("val", 3)):
        assert exact[part]["clips"] == clips and exact[part]["rmse"] == 0.0 and exact[part]["pcc"] > 0.99
        assert shifted[part]["clips"] == clips and shifted[part]["rmse"] > 1e-3
    # the reference is scored once per clip set: the two models of the 5-clip set share its outputs
    assert sorted(p.name for p in cache.glob("ref_*.npy")) == ["ref_seen_2_4_0_t.npy", "ref_seen_2_5_0.npy",
                                                               "ref_val_3_0.npy"]
