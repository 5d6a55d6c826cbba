"""Compression study: structured pruning vs distillation vs magnitude pruning, head pruning and
low-rank factorisation of Distill-MOS, by parameters, MACs, single-thread RTF and accuracy.

    python -m benchmarks.compression --json benchmarks/results/compression.json \\
        --plots benchmarks/results

Every row is measured in one run with the unpruned reference: parameters (dense and
non-zero), MACs per second of audio (analytical, dense kernels), single-thread RTF in torch
and ONNX Runtime on the same 7.68 s clips, and PCC/SRCC against the unpruned Distill-MOS on
held-out (test-split) speakers. Every compressed model gets the same distillation budget:
``--steps`` steps of ``--batch`` crops of ``--crop-seconds`` with the unpruned model's output
on the same crop as the target (students learn from scratch with the same budget). Finished
rows are appended to ``--rows`` (JSONL) and skipped on a re-run, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from benchmarks import write_json
from train.compress.checkpoint import load_pruned
from train.compress.clips import load_clips, make_crops
from train.compress.cost import count_nonzero, count_params, macs_per_second_of
from train.compress.finetune import cached_predict, finetune, predict
from train.compress.magnitude import apply_masks, magnitude_masks
from train.compress.nets import SAMPLE_RATE, load_reference_net
from train.compress.structured import head_prune, structured_prune
from train.distill import init_feature_norm, pearson, spearman
from train.lowrank import lowrank
from train.students import FAMILY, Student
from train.students import macs_per_second as student_macs

METHODS = ("structured", "distill", "lowrank", "heads", "magnitude", "iterative")
# The whole family, xxxs (about 2 k parameters) included, so that the study spans three orders
# of magnitude.
STUDENTS = FAMILY
FIELDS = ("model", "method", "ratio", "params", "nonzero_params", "macs_per_second", "rtf_torch_1t",
          "rtf_ort_1t", "pcc_teacher", "srcc_teacher")


class StudentMos(nn.Module):
    """A student's MOS output alone, on raw audio, so it trains and is timed like the others."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)[:, 0]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def time_torch(model: nn.Module, clip: np.ndarray, repeats: int) -> float:
    """Median single-thread wall time of one forward pass over ``clip``, as RTF."""
    x = torch.from_numpy(clip[None])
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / (clip.size / 16000)


def time_ort(model: nn.Module, clip: np.ndarray, repeats: int, workdir: Path) -> float:
    """Export with the dynamo exporter (Distill-MOS's complex STFT needs it; sparse weights
    are exported dense), then the median single-thread ONNX Runtime time, as RTF."""
    import onnxruntime as ort

    path = workdir / "model.onnx"
    x = torch.from_numpy(clip[None])
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, external_data=False, verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: clip[None].astype(np.float32)}
    y_ort = sess.run(None, feed)[0].reshape(-1)
    with torch.inference_mode():
        y_torch = model(x).reshape(-1).numpy()
    if not np.allclose(y_ort, y_torch, atol=1e-3):
        raise RuntimeError(f"ONNX export differs from torch: {y_ort} vs {y_torch}")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (clip.size / 16000)


def summarise(rows: list[dict]) -> dict:
    """The study's answers in numbers: RTF gained per GMAC/s saved per method (least squares
    through the reference), speed-up of unstructured sparsity, and structured pruning vs
    distillation at matched parameter counts (distillation's PCC interpolated on log params)."""
    ref = next(r for r in rows if r["method"] == "reference")
    out: dict = {"rtf_gain_per_gmacs_saved": {}, "sparsity_speedup_ort": {}, "structured_vs_distill": []}
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        for key in ("rtf_torch_1t", "rtf_ort_1t"):
            dm = np.array([(ref["macs_per_second"] - r["macs_per_second"]) / 1e9 for r in rs])
            dr = np.array([ref[key] - r[key] for r in rs])
            slope = float((dm * dr).sum() / (dm * dm).sum()) if (dm * dm).sum() > 0 else None
            out["rtf_gain_per_gmacs_saved"].setdefault(method, {})[key] = slope
    for r in rows:
        if r["method"] == "magnitude":
            sparsity = f"{1 - r['nonzero_params'] / r['params']:.2f}"
            out["sparsity_speedup_ort"][sparsity] = ref["rtf_ort_1t"] / r["rtf_ort_1t"]
            out.setdefault("sparsity_speedup_torch", {})[sparsity] = ref["rtf_torch_1t"] / r["rtf_torch_1t"]
    dist = sorted((r for r in rows if r["method"] == "distill"), key=lambda r: r["params"])
    if len(dist) >= 2:
        lp = np.log10([r["params"] for r in dist])
        pc = np.array([r["pcc_teacher"] for r in dist])
        for r in sorted((r for r in rows if r["method"] == "structured"), key=lambda r: r["params"]):
            x = np.log10(r["params"])
            if lp[0] <= x <= lp[-1]:
                d = float(np.interp(x, lp, pc))
                out["structured_vs_distill"].append({"params": r["params"], "pcc_structured": r["pcc_teacher"],
                                                     "pcc_distill_interp": d, "structured_better": r["pcc_teacher"] > d})
    return out


def ort_speedup(row: dict, ref: dict) -> float:
    """ONNX Runtime speed-up over the reference; against the reference timed next to the row
    when the row has that (rows of ``--pruned`` models), since absolute times drift."""
    return row.get("rtf_ort_1t_reference", ref["rtf_ort_1t"]) / row["rtf_ort_1t"]


def table(rows: list[dict]) -> str:
    """Markdown table of the rows, with RTF ratios against the reference."""
    ref = next(r for r in rows if r["method"] == "reference")
    lines = ["| method | model | ratio | params | non-zero | MMAC/s | RTF torch 1t | RTF ORT 1t | ORT speed-up | PCC | SRCC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['model']} | {r['ratio']:.3f} | {r['params']:,} | {r['nonzero_params']:,} | "
            f"{r['macs_per_second'] / 1e6:,.1f} | {r['rtf_torch_1t']:.4f} | {r['rtf_ort_1t']:.4f} | "
            f"{ort_speedup(r, ref):.2f}x | {r['pcc_teacher']:.3f} | {r['srcc_teacher']:.3f} |")
    return "\n".join(lines)


def answers(rows: list[dict], summary: dict) -> str:
    """The study's questions answered in markdown from the measured rows."""
    ref = next(r for r in rows if r["method"] == "reference")
    lines = ["**Structured pruning vs distillation** (distillation PCC interpolated at the same parameter count):", ""]
    for v in summary["structured_vs_distill"]:
        winner = "structured pruning" if v["structured_better"] else "distillation"
        lines.append(f"- {v['params']:,} params: structured {v['pcc_structured']:.3f} vs distilled "
                     f"{v['pcc_distill_interp']:.3f} -> {winner}")
    if not summary["structured_vs_distill"]:
        lines.append("- no structured row falls inside the distilled students' parameter range")
    lines += ["", "**Unstructured sparsity with dense kernels** (speed-up over the dense reference; < 1 is slower):", ""]
    for sp, ort_x in summary["sparsity_speedup_ort"].items():
        lines.append(f"- sparsity {sp}: ONNX Runtime {ort_x:.2f}x, torch {summary['sparsity_speedup_torch'][sp]:.2f}x")
    lines += ["", "**RTF gained per GMAC/s saved** (least-squares slope through the reference; "
              "1/slope is the effective GMAC/s that saving buys back):", ""]
    for method, v in summary["rtf_gain_per_gmacs_saved"].items():
        cells = []
        for key, label in (("rtf_ort_1t", "ORT"), ("rtf_torch_1t", "torch")):
            slope = v.get(key)
            cells.append(f"{label} {slope:.4f}" + (f" ({1 / slope:.0f} GMAC/s)" if slope and slope > 0 else "")
                         if slope is not None else f"{label} n/a (no MACs saved)")
        lines.append(f"- {method}: " + ", ".join(cells))
    best = [r for r in rows if r["method"] in ("structured", "iterative") and r["ratio"] <= 0.25
            and r["pcc_teacher"] >= 0.95 and ort_speedup(r, ref) >= 2.5]
    lines += ["", "**Structured Distill-MOS at <= 25 % of its parameters, PCC >= 0.95, >= 2.5x faster in ORT:** "
              + (", ".join(f"{r['method']} {r['params']:,} params ({r['ratio']:.1%}), PCC {r['pcc_teacher']:.3f}, "
                           f"{ort_speedup(r, ref):.1f}x" for r in best) if best else "not reached in this run")]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    """Replace the text between the results markers of ``path`` (or write the whole file)."""
    start, end = "<!-- compression-results:start -->", "<!-- compression-results:end -->"
    if path.exists() and start in (old := path.read_text()) and end in old:
        head, _, rest = old.partition(start)
        path.write_text(f"{head}{start}\n{text}\n{end}{rest.partition(end)[2]}")
    else:
        path.write_text(text + "\n")


def plot(rows: list[dict], outdir: Path) -> list[Path]:
    """PCC vs parameters (log axis, one line per method) and ORT RTF vs MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    ref = next(r for r in rows if r["method"] == "reference")
    rows = [{**r, "effective_params": r["ratio"] * ref["params"]} for r in rows]
    ref = next(r for r in rows if r["method"] == "reference")
    paths = []
    for name, xkey, ykey, xlabel, ylabel, logy in (
        ("compression_pcc_params.png", "effective_params", "pcc_teacher",
         "parameters (non-zero for magnitude pruning)",
         "PCC with unpruned Distill-MOS (held-out speakers)", False),
        ("compression_rtf_macs.png", "macs_per_second", "rtf_ort_1t", "MACs per second of audio",
         "RTF, ONNX Runtime, 1 thread", True),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in METHODS:
            rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r[xkey])
            if rs:
                ax.plot([r[xkey] for r in rs], [r[ykey] for r in rs], "o-", label=method)
        ax.plot([ref[xkey]], [ref[ykey]], "k*", markersize=12, label="Distill-MOS (reference)")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=120)
        plt.close(fig)
        paths.append(outdir / name)
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The study's options: outputs, methods and their ratios, the shared budget, the data."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compression", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, required=True, help="output JSON: config, rows, summary")
    ap.add_argument("--rows", type=Path, default=Path("cache/compression/rows.jsonl"),
                    help="per-row JSONL cache; rows already in it are not recomputed (default cache/compression/rows.jsonl)")
    ap.add_argument("--plots", type=Path, help="directory for compression_pcc_params.png and compression_rtf_macs.png")
    ap.add_argument("--markdown", type=Path,
                    help="write the table and the answers as markdown: between the compression-results markers "
                         "of this file if it has them (docs/compression.md does), else as the whole file")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--structured-keep", default="0.5,0.35,0.25,0.15,0.08,0.04,0.02",
                    help="structured pruning: shares of parameters kept")
    ap.add_argument("--heads-keep", default="0.75,0.5,0.375,0.25,0.125", help="head pruning: shares of heads kept")
    ap.add_argument("--sparsity", default="0.5,0.7,0.8,0.9,0.95", help="magnitude pruning: shares of weights zeroed")
    ap.add_argument("--lowrank-keep", default="0.6,0.4,0.25,0.15,0.08",
                    help="low-rank: share of each factorised layer's weights kept")
    ap.add_argument("--students", default=",".join(STUDENTS),
                    help="distillation: students, train/students.py FAMILY members (xxxs has about 2 k params)")
    ap.add_argument("--steps", type=int, default=100, help="fine-tuning/distillation steps per model (default 100)")
    ap.add_argument("--batch", type=int, default=4, help="crops per step (default 4)")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak LR for fine-tuning compressed models (default 3e-4)")
    ap.add_argument("--student-lr", type=float, default=3e-3, help="peak LR for students trained from scratch (default 3e-3)")
    ap.add_argument("--crop-seconds", type=float, default=2.0, help="training crop length in seconds (default 2.0)")
    ap.add_argument("--train-clips", type=int, default=400, help="train-split clips for crops (default 400)")
    ap.add_argument("--crops-per-clip", type=int, default=2, help="crops per training clip (default 2)")
    ap.add_argument("--eval-clips", type=int, default=200, help="test-split (held-out speaker) clips for PCC (default 200)")
    ap.add_argument("--importance-batches", type=int, default=4, help="batches for Taylor importance (default 4)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per RTF measurement, median taken (default 5)")
    ap.add_argument("--cache", type=Path, default=Path("cache/compression"), help="clips and reference outputs (default cache/compression)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--pruned", type=Path, nargs="*", default=[],
                    help="models saved by python -m train.prune (for example --method iterative, which has its own "
                         "stated budget) to measure as extra rows, named by their method; the reference's ORT time "
                         "is measured again next to each")
    return ap


@dataclass(frozen=True)
class StudyInputs:
    """What the study compresses and measures on: the unpruned ``reference``, its ``name`` in
    the rows, a ``label`` keying the row and reference-output caches (``full`` for Distill-MOS
    on the generated splits), clips of held-out speakers to measure on and training clips to
    crop. Tests pass a toy reference and synthetic clips."""

    reference: nn.Module
    name: str
    label: str
    eval_clips: np.ndarray
    train_clips: np.ndarray


def load_inputs(args: argparse.Namespace, log: Callable[[str], None]) -> StudyInputs:
    """The shipped Distill-MOS, ``--eval-clips`` clips of the test split (speakers never trained
    on) and ``--train-clips`` clips of the train split."""
    eval_clips, _ = load_clips("test", args.eval_clips, cache_dir=args.cache, seed=args.seed, log=log)
    train_clips, _ = load_clips("train", args.train_clips, cache_dir=args.cache, seed=args.seed, log=log)
    return StudyInputs(load_reference_net(), "distill-mos-v7", "full", eval_clips, train_clips)


def _append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_study(args: argparse.Namespace, inputs: StudyInputs, log: Callable[[str], None]) -> dict:
    """Build and measure every row ``args`` asks for (skipping rows ``--rows`` already holds
    from a run with the same data and budget), then write ``--json`` and, if asked, the
    markdown and the plots; returns the result written to ``--json``."""
    methods = [m for m in args.methods.split(",") if m]
    ref_net, ref_name, eval_clips = inputs.reference, inputs.name, inputs.eval_clips
    samples = eval_clips.shape[1]
    crops = make_crops(inputs.train_clips, int(args.crop_seconds * SAMPLE_RATE), args.crops_per_clip, seed=args.seed)
    settings = {"structured": _floats(args.structured_keep), "heads": _floats(args.heads_keep),
                "magnitude": _floats(args.sparsity), "lowrank": _floats(args.lowrank_keep),
                "distill": [s for s in args.students.split(",") if s], "iterative": []}
    steps = args.steps
    saved = {str(path): load_pruned(path) for path in args.pruned}
    # Rows are reused only from a run with the same data and budget.
    tag = (f"{inputs.label}-steps{steps}-batch{args.batch}-crop{crops.shape[1]}-n{len(crops)}"
           f"-lr{args.lr}-slr{args.student_lr}-eval{len(eval_clips)}-seed{args.seed}")
    log("reference outputs on eval clips and training crops")
    ref_eval = cached_predict(ref_net, eval_clips, args.cache / f"ref_eval_{inputs.label}_{eval_clips.shape}_{args.seed}.npy")
    targets = cached_predict(ref_net, crops, args.cache / f"ref_crops_{inputs.label}_{crops.shape}_{args.seed}.npy").astype(np.float32)
    ref_params = count_params(ref_net)
    timing_clip = eval_clips[0]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["pruned"] = [str(p) for p in args.pruned]
    config.update(reference=ref_name, steps=steps, eval_clip_samples=samples, eval_clips=len(eval_clips),
                  train_crops=len(crops), crop_samples=int(crops.shape[1]), threads=1, torch=torch.__version__)

    done = {(r["method"], str(r["setting"])): r for r in _read_rows(args.rows) if r.get("run") == tag}

    def measure(model: nn.Module, method: str, setting, model_name: str, extra: dict,
                macs: int | None = None) -> dict:
        pred = predict(model, eval_clips)
        params = count_params(model)
        with tempfile.TemporaryDirectory() as tmp:
            rtf_ort = time_ort(model, timing_clip, args.repeats, Path(tmp))
        return {
            "run": tag, "model": model_name, "method": method, "setting": setting,
            "ratio": (count_nonzero(model) if method == "magnitude" else params) / ref_params,
            "params": params, "nonzero_params": count_nonzero(model),
            "macs_per_second": macs if macs is not None else macs_per_second_of(model, samples),
            "rtf_torch_1t": time_torch(model, timing_clip, args.repeats), "rtf_ort_1t": rtf_ort,
            "pcc_teacher": pearson(pred, ref_eval), "srcc_teacher": spearman(pred, ref_eval), **extra,
        }

    def run_row(method: str, setting, build: Callable[[], tuple[nn.Module, str, dict, int | None]]) -> None:
        if (method, str(setting)) in done:
            return
        t0 = time.time()
        log(f"[{method} {setting}] building")
        model, name, extra, macs = build()
        row = measure(model, method, setting, name, extra, macs)
        row["seconds"] = round(time.time() - t0, 1)
        _append_row(args.rows, row)
        done[(method, str(setting))] = row
        log(f"[{method} {setting}] params={row['params']} pcc={row['pcc_teacher']:.3f} "
            f"rtf_ort={row['rtf_ort_1t']:.4f} ({row['seconds']}s)")

    def fresh() -> nn.Module:
        return copy.deepcopy(ref_net)

    def tune(model: nn.Module, after=None, lr: float | None = None) -> dict:
        before = pearson(predict(model, eval_clips), ref_eval)
        losses = finetune(model, crops, targets, steps=steps, batch=args.batch, lr=lr or args.lr, seed=args.seed,
                          after_step=after, log=log)
        return {"pcc_before_finetune": before, "finetune_steps": steps,
                "final_loss": float(np.mean(losses[-10:])) if losses else None}

    run_row("reference", 1.0, lambda: (ref_net, ref_name, {"finetune_steps": 0}, None))

    def b_structured(keep: float):
        m = structured_prune(fresh(), crops, targets, keep=keep, importance_batches=args.importance_batches,
                             batch=args.batch, seed=args.seed, log=log)
        return m, f"{ref_name}-structured{keep}", tune(m), None

    def b_heads(keep: float):
        m = head_prune(fresh(), crops, targets, keep_heads=keep, importance_batches=args.importance_batches,
                       batch=args.batch, seed=args.seed)
        heads = [layer.attn.heads for layer in m.layers]
        return m, f"{ref_name}-heads{keep}", {**tune(m), "heads_per_layer": heads}, None

    def b_magnitude(sparsity: float):
        m = fresh()
        masks = magnitude_masks(m, sparsity)
        return m, f"{ref_name}-sparse{sparsity}", tune(m, after=lambda: apply_masks(masks)), None

    def b_lowrank(keep: float):
        m = fresh()
        names = lowrank(m, keep)
        return m, f"{ref_name}-lowrank{keep}", {**tune(m), "factorised_layers": len(names)}, None

    def b_distill(member: str):
        torch.manual_seed(args.seed)
        student = Student(STUDENTS[member])
        feats = student.clip_energies(torch.from_numpy(crops))
        init_feature_norm(student, feats.detach())
        m = StudentMos(student)
        extra = tune(m, lr=args.student_lr)
        return m, f"student-{member}", extra, student_macs(student.cfg, samples // 640)

    def b_saved(path: str):
        model, meta = saved[path]
        with tempfile.TemporaryDirectory() as tmp:
            ref_time = time_ort(ref_net, timing_clip, args.repeats, Path(tmp))
        return (model, f"{ref_name}-{Path(path).stem}",
                {"budget": meta, "finetune_steps": meta.get("steps"), "rtf_ort_1t_reference": ref_time}, None)

    builders = {"structured": b_structured, "heads": b_heads, "magnitude": b_magnitude, "lowrank": b_lowrank,
                "distill": b_distill}
    for method in methods:
        for setting in settings[method]:
            run_row(method, setting, lambda b=builders[method], s=setting: b(s))
    for path, (_, meta) in saved.items():
        run_row(meta["method"], path, lambda p=path: b_saved(p))
    methods += [meta["method"] for _, meta in saved.values()]

    rows = [done[k] for k in done if k[0] == "reference" or k[0] in methods]
    rows.sort(key=lambda r: (["reference", *METHODS].index(r["method"]), -r["ratio"]))
    result = {"benchmark": "compression", "config": config, "rows": rows, "summary": summarise(rows)}
    write_json(args.json, result, indent=1)
    text = table(rows)
    print(text)
    print(json.dumps(result["summary"], indent=1))
    if args.markdown:
        write_markdown(args.markdown, f"{text}\n\n{answers(rows, result['summary'])}")
    if args.plots:
        for p in plot(rows, args.plots):
            log(f"wrote {p}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if unknown := {m for m in args.methods.split(",") if m} - set(METHODS):
        ap.error(f"unknown methods {sorted(unknown)}")
    if bad := [s for s in args.students.split(",") if s and s not in STUDENTS]:
        ap.error(f"unknown students {bad}")
    torch.set_num_threads(1)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    run_study(args, load_inputs(args, log), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
