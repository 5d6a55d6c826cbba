"""Student vs Distill-MOS speed, measured in the same run on the same audio, one thread each.

    python -m benchmarks.speed --json benchmarks/results/speed.json [--model streamqa-s]

Two workloads (issue "Distil tiny students", acceptance 4):

- offline: score 8 s files. The student runs in ONNX Runtime through the runtime's own
  ``Model.score``; Distill-MOS runs in torch and, when its graph exports, in ONNX Runtime,
  and the faster of the two is the reference.
- live: a 60 s stream at a 1 s hop. Distill-MOS has no state, so it re-scores its 7.68 s
  window at every hop; the student advances its state by one hop.

Absolute times on this machine are noisy, so the result that matters is the ratio, and
each figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import write_json
from streamqa.api import score
from streamqa.model import Model, load_model

SR = 16000
WINDOW = 122_880


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls allocate and JIT-select kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def held_out_speech(n: int, seconds: float) -> list[np.ndarray]:
    """Clips of held-out (test-split) speakers: no training speaker is timed."""
    from train.data.manifest import DEFAULT_TEST_SPEAKERS, split_of
    from train.data.speech import list_utterances, load_utterance

    out = []
    for u in list_utterances():
        if split_of(u.speaker, (), DEFAULT_TEST_SPEAKERS) != "test":
            continue
        audio = load_utterance(u)
        while len(audio) < seconds * SR:
            audio = np.concatenate([audio, audio])
        out.append(audio[: int(seconds * SR)].astype(np.float32))
        if len(out) == n:
            break
    if not out:
        raise RuntimeError("no held-out speech found: run `python -m train.data.manifest` first")
    return out


def distillmos_onnx(model, workdir: Path) -> tuple[object | None, str]:
    """Try to export Distill-MOS to ONNX; returns (session or None, what happened)."""
    import onnxruntime as ort
    import torch

    path = workdir / "distillmos.onnx"
    try:
        torch.onnx.export(model, (torch.zeros(1, WINDOW),), str(path), input_names=["audio"], dynamo=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), "exported"
    except Exception as exc:  # the exporter fails in many ways; the reason goes into the JSON
        return None, f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def run(model: Model, clips: list[np.ndarray], repeats: int, live_seconds: float) -> dict:
    import torch

    from train.teachers.distillmos import load_distillmos_model

    torch.set_num_threads(1)
    dm = load_distillmos_model()
    with tempfile.TemporaryDirectory() as tmp:
        dm_ort, ort_status = distillmos_onnx(dm, Path(tmp))

        def dm_torch_score(x: np.ndarray) -> None:
            with torch.no_grad():
                dm(torch.from_numpy(x)[None])

        def dm_ort_score(x: np.ndarray) -> None:
            # The exported graph takes exactly one 7.68 s segment: segment like the package.
            over = len(x) - WINDOW
            hops = int(np.ceil(over / SR)) + 1 if over > 0 else 1
            starts = np.linspace(0, max(over, 0), hops).astype(int)
            for s in starts:
                dm_ort.run(None, {"audio": x[None, s : s + WINDOW]})

        offline = {"student_ort": [], "distillmos_torch": [], "distillmos_ort": []}
        for x in clips:
            offline["student_ort"].append(_median_seconds(lambda: score(x, SR, model=model), repeats))
            offline["distillmos_torch"].append(_median_seconds(lambda: dm_torch_score(x), repeats))
            if dm_ort is not None:
                offline["distillmos_ort"].append(_median_seconds(lambda: dm_ort_score(x), repeats))

        # Live: a stream of live_seconds at a 1 s hop.
        stream = np.concatenate(clips)
        stream = np.tile(stream, int(np.ceil(live_seconds * SR / len(stream))))[: int(live_seconds * SR)]
        hop = SR
        n_hops = len(stream) // hop

        def student_live() -> None:
            state = model.init_state(1)
            for k in range(n_hops):
                _, state = model.step(stream[None, k * hop : (k + 1) * hop], state)

        def dm_live(score_window: Callable[[np.ndarray], None]) -> None:
            for k in range(n_hops):
                end = (k + 1) * hop
                window = stream[max(0, end - WINDOW) : end]
                score_window(np.pad(window, (WINDOW - len(window), 0)))

        live = {
            # The student's 60 hops take a tenth of a second, so one neighbour's burst can
            # double a single run: the median of ``repeats`` runs, as for the files.
            "student_ort": _median_seconds(student_live, repeats),
            "distillmos_torch": _median_seconds(lambda: dm_live(dm_torch_score), 1),
        }
        if dm_ort is not None:
            live["distillmos_ort"] = _median_seconds(lambda: dm_live(dm_ort_score), 1)

    per_file = {k: statistics.mean(v) for k, v in offline.items() if v}
    ref_off = min(v for k, v in per_file.items() if k.startswith("distillmos"))
    ref_live = min(v for k, v in live.items() if k.startswith("distillmos"))
    clip_s = len(clips[0]) / SR
    return {
        "model": model.info.name,
        "params": model.info.params,
        "macs_per_second": model.info.macs_per_second,
        "threads": 1,
        "distillmos_onnx": ort_status,
        "offline": {
            "files": len(clips),
            "file_seconds": clip_s,
            "seconds_per_file": per_file,
            "rtf": {k: v / clip_s for k, v in per_file.items()},
            "speedup_vs_distillmos": ref_off / per_file["student_ort"],
        },
        "live": {
            "stream_seconds": n_hops * hop / SR,
            "hop_seconds": hop / SR,
            "seconds_total": live,
            "speedup_vs_distillmos": ref_live / live["student_ort"],
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="bundled student name or .onnx path (default: the shipped smallest)")
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--files", type=int, default=8, help="number of 8 s held-out files")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (median)")
    ap.add_argument("--live-seconds", type=float, default=60.0, help="length of the live stream")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = load_model(args.model, threads=1)
    result = run(model, held_out_speech(args.files, 8.0), args.repeats, args.live_seconds)
    if args.json:
        write_json(args.json, result)
    off, live = result["offline"], result["live"]
    print(f"{'workload':<10}{'student (s)':>14}{'Distill-MOS (s)':>18}{'speed-up':>10}")
    ref = min(v for k, v in off["seconds_per_file"].items() if k.startswith("distillmos"))
    print(f"{'8 s file':<10}{off['seconds_per_file']['student_ort']:>14.4f}{ref:>18.4f}{off['speedup_vs_distillmos']:>9.0f}x")
    ref = min(v for k, v in live["seconds_total"].items() if k.startswith("distillmos"))
    print(f"{'60 s live':<10}{live['seconds_total']['student_ort']:>14.4f}{ref:>18.4f}{live['speedup_vs_distillmos']:>9.0f}x")
    print(f"Distill-MOS ONNX: {result['distillmos_onnx']}", file=sys.stderr)


if __name__ == "__main__":
    main()
