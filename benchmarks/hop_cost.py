"""Cost per hop against window length, through the runtime's own ``Model.step``.

docs/architecture.md (section 2) promises that a hop costs the same whatever the window: the state
carries frame embeddings, so a longer window only lengthens a ring the pooling reads. This
measures it where it matters, in ONNX Runtime on one thread, for a single stream and for a
batch as the engine runs it, and reports the spread between the shortest and the longest
window (acceptance: within 10 % between 2 s and 8 s).

    python -m benchmarks.hop_cost --model streamqa-s --json benchmarks/results/hop_cost.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_json
from streamqa.model import Model, load_model


def _inputs(model: Model, window_s: float, batch: int, hop_s: float) -> tuple[np.ndarray, dict]:
    sr, frame = model.info.sample_rate, model.info.frame_samples
    hop = max(frame, round(hop_s * sr / frame) * frame)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((batch, hop))).astype(np.float32)
    state = model.init_state(batch, window_s)
    for _ in range(3):  # warm-up: allocator and kernel selection
        _, state = model.step(audio, state)
    return audio, state


def time_windows(model: Model, windows: list[float], batch: int, *, hop_s: float, repeats: int, rounds: int) -> list[float]:
    """Seconds per step() call for each window: the best of ``rounds`` means of ``repeats`` calls.

    The windows take turns within every round, so a neighbour's CPU burst hits them all
    alike, and the best round is the least disturbed one (the machine is shared).
    """
    inputs = [_inputs(model, w, batch, hop_s) for w in windows]
    best = [float("inf")] * len(windows)
    for _ in range(rounds):
        for i, (audio, state) in enumerate(inputs):
            t0 = time.perf_counter()
            for _ in range(repeats):
                _, state = model.step(audio, state)
            best[i] = min(best[i], (time.perf_counter() - t0) / repeats)
            inputs[i] = (audio, state)
    return best


def run(model: Model, windows: list[float], batches: list[int], *, hop_s: float, repeats: int, rounds: int) -> dict[str, Any]:
    rows = []
    spread = {}
    for batch in batches:
        costs = time_windows(model, windows, batch, hop_s=hop_s, repeats=repeats, rounds=rounds)
        for w, sec in zip(windows, costs):
            rows.append({"window_s": w, "batch": batch, "ms_per_call": 1e3 * sec, "ms_per_stream_hop": 1e3 * sec / batch})
        spread[str(batch)] = (max(costs) - min(costs)) / min(costs)
    return {
        "model": model.info.name,
        "hop_s": hop_s,
        "threads": 1,
        "machine": platform.processor() or platform.machine(),
        "timing": "best of rounds, windows interleaved within each round",
        "rows": rows,
        "spread": spread,
        "within_10_percent": all(v <= 0.10 for v in spread.values()),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="bundled model name or .onnx path")
    ap.add_argument("--windows", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--hop", type=float, default=1.0, help="hop in seconds")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    model = load_model(args.model, threads=1)
    result = run(model, args.windows, args.batches, hop_s=args.hop, repeats=args.repeats, rounds=args.rounds)
    print(f"{'window s':>9} {'batch':>6} {'ms/call':>9} {'ms/stream-hop':>14}")
    for r in result["rows"]:
        print(f"{r['window_s']:>9g} {r['batch']:>6} {r['ms_per_call']:>9.3f} {r['ms_per_stream_hop']:>14.4f}")
    for batch, s in result["spread"].items():
        print(f"batch {batch}: spread {100 * s:.1f} % across windows")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
