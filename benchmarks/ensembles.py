"""Would the mean of two students beat one? Every single model and every pair, on one split.

    python -m benchmarks.ensembles --split val --json OUT \
        A=runs/final/s/streamqa-s.onnx B=runs/cand_b/s/streamqa-s.onnx ...

Two ``s`` networks sharing one Gabor frontend stay within the shipping budget (about
212 k parameters, 13.4 M MAC/s), so an ensemble of two is a candidate for the shipped
student. Each model scores every clip once through ``Model.score`` (the runtime's path);
a pair's score is the mean of its two models' scores, which is what one network averaging
two branches per window would give, because file pooling is a mean too. Rows of the JSON
are sorted by PCC for ``mos``, best first.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from benchmarks import write_json
from train.evaluate import accuracy, clip_scores, select_rows

DEFAULT_LABELS = ("train/labels/val.distillmos.csv", "train/labels/val.dnsmos1.csv",
                  "train/labels/test.distillmos.csv", "train/labels/test.dnsmos1.csv")


def summarise(name: str, preds: dict[str, np.ndarray], rows: list[dict[str, str]]) -> dict:
    """PCC and SRCC per output of one model or pair (the per-speaker detail is left out)."""
    result = {k: {"pcc": v["pcc"], "srcc": v["srcc"]} for k, v in accuracy(preds, rows).items()}
    return {"name": name, **result}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL.onnx, at least two")
    ap.add_argument("--labels", type=Path, nargs="+", default=[Path(p) for p in DEFAULT_LABELS])
    ap.add_argument("--split", default="val", help="which split to score (default: val, the one to choose on)")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    named = dict(m.split("=", 1) for m in args.models)
    if len(named) < 2:
        ap.error("give at least two NAME=MODEL.onnx")
    rows = select_rows(args.labels, args.split)
    scores = {name: clip_scores(Path(path), rows, args.audio_dir) for name, path in named.items()}
    results = [summarise(name, s, rows) for name, s in scores.items()]
    for a, b in itertools.combinations(scores, 2):
        mean = {k: (scores[a][k] + scores[b][k]) / 2 for k in scores[a]}
        results.append(summarise(f"{a}+{b}", mean, rows))
    results.sort(key=lambda r: -r["mos"]["pcc"])
    for r in results:
        print(f"{r['name']:12s} mos PCC {r['mos']['pcc']:.4f} SRCC {r['mos']['srcc']:.4f}")
    write_json(args.json, {"split": args.split, "clips": len(rows), "models": named, "results": results})


if __name__ == "__main__":
    main()
