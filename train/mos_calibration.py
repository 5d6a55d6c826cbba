"""A monotone map of a student's ``mos`` output, fitted on voices it never heard.

    python -m train.mos_calibration streamqa/models/streamqa-s.onnx --split val \
        --labels train/labels/val.distillmos.csv train/labels/val.real.distillmos.csv \
        --candidate cal-affine= --candidate cal-pwl=1.5,2.25,3,3.75 \
        --out runs/r21 --json benchmarks/results/candidates_s/mos_calibration_r21.json

Why: a student can be off on every voice it never heard in the same way, and a map fitted
on held-out voices then corrects what no training change reaches. Whether it is, leaving one
voice out says (for ``streamqa-s`` it is not: docs/experiments/2026-12-real-voices.md,
round 21, where both maps did worse on the voice left out). The map is piecewise linear in the raw
score, slopes at least zero (it keeps every order), carried on beyond its end knots with the
end segments' slopes; ``StudentConfig.mos_map`` holds its knots and the graph applies it
(``Student.map_mos``), so every consumer of the ONNX file publishes the mapped value.

It is fitted by non-negative least squares of Distill-MOS on the raw score over the real
voices of ``--split``: their labelled degraded clips and up to ``--clean`` clean windows each
(scored by Distill-MOS in the run). Each candidate is judged by leaving one voice out (the map
fitted on the other voices, applied to that one), then fitted on every voice and written as
``OUT/NAME.onnx``: the source's weights and metadata, its config given the map.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from train.data.voices import is_real
from train.distill import pearson, spearman
from train.evaluate import CLEAN_WINDOWS, clean_scores, clean_windows, clip_scores, select_rows

# The map's outer knots: the ends of the MOS scale (the segments go on beyond them).
SCALE = (1.0, 5.0)

Knots = tuple[tuple[float, float], ...]


def knot_xs(inner: tuple[float, ...]) -> np.ndarray:
    """Raw values of the knots: the scale's ends around ``inner`` (which must lie inside)."""
    if any(not SCALE[0] < x < SCALE[1] for x in inner) or list(inner) != sorted(set(inner)):
        raise ValueError(f"inner knots {inner} must rise strictly inside {SCALE}")
    return np.array([SCALE[0], *inner, SCALE[1]], np.float64)


def _segments(raw: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """[n, K] how far each raw value runs along each of the K segments (open end segments)."""
    lo, hi = xs[:-1].copy(), xs[1:].copy()
    lo[0], hi[-1] = -np.inf, np.inf
    return np.clip(raw[:, None], lo, hi) - xs[:-1]


def apply_map(knots: Knots, raw: np.ndarray) -> np.ndarray:
    """``raw`` through the map, as the graph computes it (NaN stays NaN)."""
    xs, ys = (np.array(v, np.float64) for v in zip(*knots))
    slopes = np.diff(ys) / np.diff(xs)
    return ys[0] + _segments(np.asarray(raw, np.float64), xs) @ slopes


def fit_map(raw: np.ndarray, target: np.ndarray, inner: tuple[float, ...]) -> Knots:
    """The least-squares map with slopes >= 0 and knots at the scale's ends and ``inner``."""
    xs = knot_xs(inner)
    seg = _segments(raw, xs)
    design = np.column_stack([seg, np.ones(len(raw)), -np.ones(len(raw))])  # y0 = a - b, free
    coef = nnls(design, target)[0]
    slopes, y0 = coef[:-2], coef[-2] - coef[-1]
    ys = y0 + np.concatenate([[0.0], np.cumsum(slopes * np.diff(xs))])
    return tuple((float(x), float(y)) for x, y in zip(xs, ys))


@dataclasses.dataclass
class VoiceSet:
    """One voice's raw scores and Distill-MOS labels: degraded clips and clean windows."""

    raw: np.ndarray
    target: np.ndarray
    clean_raw: np.ndarray
    clean_target: np.ndarray


def _fit_set(voices: list[VoiceSet]) -> tuple[np.ndarray, np.ndarray]:
    raw = np.concatenate([a for v in voices for a in (v.raw, v.clean_raw)])
    target = np.concatenate([a for v in voices for a in (v.target, v.clean_target)])
    ok = np.isfinite(raw)  # windows judged to hold no speech have no score
    return raw[ok], target[ok]


def _figures(pred: dict[str, VoiceSet]) -> dict:
    """Pooled degraded PCC/SRCC and per-voice clean offsets of already mapped scores."""
    raw = np.concatenate([v.raw for v in pred.values()])
    target = np.concatenate([v.target for v in pred.values()])
    ok = np.isfinite(raw)
    offsets = {}
    for name, v in pred.items():
        c = np.isfinite(v.clean_raw)
        offsets[name] = float(v.clean_raw[c].mean() - v.clean_target[c].mean()) if c.any() else None
    known = [abs(o) for o in offsets.values() if o is not None]
    return {"pcc": pearson(raw[ok], target[ok]), "srcc": spearman(raw[ok], target[ok]), "clips": int(ok.sum()),
            "clean_offsets": offsets, "mean_abs_clean_offset": float(np.mean(known)) if known else None}


def _mapped(v: VoiceSet, knots: Knots) -> VoiceSet:
    return VoiceSet(apply_map(knots, v.raw), v.target, apply_map(knots, v.clean_raw), v.clean_target)


def leave_one_voice_out(voices: dict[str, VoiceSet], inner: tuple[float, ...]) -> dict:
    """Each voice mapped by the map fitted on the others; the pooled figures and the maps."""
    held, maps = {}, {}
    for name, v in voices.items():
        maps[name] = fit_map(*_fit_set([o for n, o in voices.items() if n != name]), inner)
        held[name] = _mapped(v, maps[name])
    return {**_figures(held), "maps": {n: [list(k) for k in m] for n, m in maps.items()}}


def write_mapped(src: Path, knots: Knots, out: Path, note: str) -> Path:
    """``src``'s student (weights and metadata) with ``knots`` as its mos map, exported."""
    from train.export import export_onnx, load_onnx_student
    from train.students import Student

    model, meta = load_onnx_student(src)
    mapped = Student(dataclasses.replace(model.cfg, mos_map=knots))
    mapped.load_state_dict(model.state_dict())
    return export_onnx(mapped, out, {**meta, "mos_map_fit": note})


def parse_candidate(text: str) -> tuple[str, tuple[float, ...]]:
    """``NAME=X1,X2,...`` (the inner knots; none for an affine map) as (name, knots)."""
    name, _, knots = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"candidate {text!r}: give NAME=INNER_KNOTS (empty for affine)")
    try:
        inner = tuple(float(x) for x in knots.split(",") if x.strip())
        knot_xs(inner)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"candidate {text!r}: {e}") from None
    return name, inner


def voice_sets(model: Path, labels: list[Path], split: str, audio_dir: Path, speech_cache: Path,
               per_voice: int) -> tuple[dict[str, VoiceSet], dict[str, np.ndarray]]:
    """The real voices' raw scores and labels of ``split``, and the other (TTS) rows' raw
    scores and labels as {"raw", "target"}."""
    rows = [r for r in select_rows(labels, split) if r.get("mos") not in (None, "")]
    if not rows:
        raise SystemExit(f"no labelled {split} rows in {', '.join(map(str, labels))}")
    raw = clip_scores(model, rows, audio_dir)["mos"]
    target = np.array([float(r["mos"]) for r in rows])
    speakers = np.array([r["speaker"] for r in rows])
    real = np.array([is_real(s) for s in speakers])
    names = sorted(set(speakers[real]))
    clean = clean_scores({"raw": model}, clean_windows(names, per_voice, speech_cache))
    empty = np.zeros(0)
    voices = {n: VoiceSet(raw[speakers == n], target[speakers == n],
                          clean.get(n, {}).get("raw", empty), clean.get(n, {}).get("distillmos", empty))
              for n in names}
    return voices, {"raw": raw[~real], "target": target[~real]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.mos_calibration", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the student's ONNX file, without a map")
    ap.add_argument("--labels", type=Path, nargs="+", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--candidate", type=parse_candidate, action="append", required=True,
                    metavar="NAME=INNER_KNOTS")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--speech-cache", type=Path, default=Path("cache/speech"))
    ap.add_argument("--clean", type=int, default=CLEAN_WINDOWS, help="clean windows per real voice")
    ap.add_argument("--out", type=Path, required=True, help="where each candidate's ONNX goes")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    voices, tts = voice_sets(args.model, args.labels, args.split, args.audio_dir, args.speech_cache, args.clean)
    ok = np.isfinite(tts["raw"])
    report: dict = {"model": str(args.model), "split": args.split, "voices": list(voices),
                    "raw": {**_figures(voices), "tts_pcc": pearson(tts["raw"][ok], tts["target"][ok])},
                    "candidates": {}}
    for name, inner in args.candidate:
        knots = fit_map(*_fit_set(list(voices.values())), inner)
        out = args.out / f"{name}.onnx"
        note = (f"{args.split} real voices {', '.join(voices)}: degraded clips and up to {args.clean} clean "
                f"windows each, non-negative least squares on Distill-MOS")
        write_mapped(args.model, knots, out, note)
        report["candidates"][name] = {"inner_knots": list(inner), "knots": [list(k) for k in knots], "onnx": str(out),
                                      "held_out": leave_one_voice_out(voices, inner),
                                      "tts_pcc": pearson(apply_map(knots, tts["raw"][ok]), tts["target"][ok])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'':14s}{'held-out PCC':>14s}{'SRCC':>8s}{'mean |clean|':>14s}{'TTS PCC':>9s}")
    rows = [("raw", report["raw"], report["raw"]["tts_pcc"])] + \
        [(n, c["held_out"], c["tts_pcc"]) for n, c in report["candidates"].items()]
    for name, fig, tts_pcc in rows:
        print(f"{name:14s}{fig['pcc']:>14.3f}{fig['srcc']:>8.3f}{fig['mean_abs_clean_offset']:>14.3f}{tts_pcc:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
