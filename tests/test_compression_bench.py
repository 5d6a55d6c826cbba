"""The compression benchmark: contract fields, resumable rows, answers and plots (miniature)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compression import FIELDS, answers, main, summarise, table


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
    args = ["--mini", "--methods", "structured,magnitude", "--json", str(tmp_path / "c.json"),
            "--rows", str(tmp_path / "rows.jsonl"), "--cache", str(tmp_path / "cache"), "--plots", str(tmp_path)]
    assert main(args) == 0
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
    assert main(args) == 0  # every row is cached: nothing is recomputed
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == n_lines
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == rows


def test_help_documents_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.compression", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for opt in ("--json", "--rows", "--plots", "--markdown", "--methods", "--structured-keep", "--heads-keep",
                "--sparsity", "--lowrank-keep", "--students", "--steps", "--batch", "--lr", "--student-lr",
                "--crop-seconds", "--train-clips", "--crops-per-clip", "--eval-clips", "--importance-batches",
                "--repeats", "--cache", "--seed", "--pruned", "--mini"):
        assert opt in out


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
    import torch

    from train.compress_common import synthetic_clips, tiny_distillmos_net
    from train.prune import iterative_prune

    net = iterative_prune(tiny_distillmos_net(0), synthetic_clips(4, 16000, seed=5), keep=0.5, stages=1, steps=2,
                          batch=2, crop_samples=6400, lr=1e-3, importance_batches=1, log=lambda s: None)
    meta = {"method": "iterative", "keep": 0.5, "steps": 2, "stages": 1}
    torch.save({"model": net, "meta": meta}, tmp_path / "it.pt")
    args = ["--mini", "--methods", "structured", "--pruned", str(tmp_path / "it.pt"), "--json", str(tmp_path / "c.json"),
            "--rows", str(tmp_path / "rows.jsonl"), "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
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


def test_pruned_fit_help_documents_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.pruned_fit", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for opt in ("--pruned", "--json", "--clips", "--val-clips", "--cache", "--threads", "--seed"):
        assert opt in out
