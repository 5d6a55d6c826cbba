"""The student family side by side: size, cost and real-voice accuracy of every member.

    python -m benchmarks.family xxxs=runs/fam_xxxs/streamqa-xxxs.onnx \
        s=streamqa/models/streamqa-s.onnx l=streamqa/models/streamqa-l.onnx \
        --json benchmarks/results/family.json

Why a table of its own: a user picks a member by what it costs (parameters, MAC per second
of audio, the time of one live hop) against what it gets right on voices it never heard, and
those figures only compare when measured in one run on the same clips. Per member:

- ``params`` and ``macs_per_second`` from the model's own metadata (what its card says);
- accuracy against Distill-MOS on the degraded clips of the held-out real voices and of the
  TTS voices of ``--split`` (``benchmarks.real_voices``'s measurement), and the clean offset
  of every held-out real voice;
- ``hop_ms``: the median time of one ``step()`` over a 1 s hop on one thread, and its ratio
  to the first model named, timed in this run (absolute times are noisy on a shared machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import write_json
from benchmarks.real_voices import add_clip_args, clean_offsets, degraded, labelled, named_models
from train.evaluate import clean_windows

HOP_SAMPLES = 16000  # the live monitor's default 1 s hop at 16 kHz


def hop_ms(path: Path, hops: int = 200, seed: int = 0) -> float:
    """Median milliseconds of one ``step()`` on a 1 s hop of noise, one thread, warm state."""
    from streamqa.model import Model

    model = Model(path, threads=1)
    state = model.init_state()
    audio = (np.random.default_rng(seed).standard_normal((1, HOP_SAMPLES)) * 0.05).astype(np.float32)
    for _ in range(5):
        _, state = model.step(audio, state)
    times = []
    for _ in range(hops):
        t0 = time.perf_counter()
        _, state = model.step(audio, state)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def size(path: Path) -> dict:
    """Parameters and MAC per second of audio, as the model's metadata declares them."""
    from streamqa.model import Model

    info = Model(path).info
    return {"params": info.params, "macs_per_second": info.macs_per_second}


def markdown(result: dict) -> str:
    """The family table as docs/results.md shows it."""
    lines = ["| member | params | MAC/s of audio | 1 s hop (x first) | real voices PCC / SRCC | TTS PCC "
             "| worst clean offset |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in result["members"].items():
        real, tts = row["degraded"]["real"], row["degraded"]["tts"]
        worst = max((abs(v) for v in row["clean_offset"].values() if v is not None), default=float("nan"))
        lines.append(f"| {name} | {row['params']:,} | {row['macs_per_second'] / 1e6:.2f} M | {row['hop_ratio']:.2f} "
                     f"| {real['pcc']:.3f} / {real['srcc']:.3f} | {tts['pcc']:.3f} | {worst:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.family", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL.onnx, smallest first; hop times are ratios to the first")
    ap.add_argument("--labels", type=Path, nargs="+",
                    default=[Path("train/labels/test.distillmos.csv"), Path("train/labels/test.real.distillmos.csv")])
    add_clip_args(ap)
    args = ap.parse_args(argv)
    models = named_models(args.models)
    rows, voices = labelled(args.labels, args.split)
    clean = clean_offsets(models, clean_windows(voices, args.clean, args.speech_cache))
    hops = {name: hop_ms(path) for name, path in models.items()}
    first = hops[next(iter(models))]
    members = {}
    for name, path in models.items():
        members[name] = {"model": str(path), **size(path), "hop_ms": hops[name], "hop_ratio": hops[name] / first,
                         "degraded": degraded(path, rows, args.audio_dir),
                         "clean_offset": {v: clean[v][name]["offset"] for v in clean}}
    params = [m["params"] for m in members.values() if m["params"]]
    result = {"split": args.split, "clips": len(rows), "real_voices": voices, "members": members,
              "orders_of_magnitude": float(np.log10(max(params) / min(params))) if params else None}
    print(markdown(result))
    print(f"span: {result['orders_of_magnitude']:.2f} orders of magnitude in parameters")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
