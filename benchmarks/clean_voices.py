"""What a clean call reads, for voices given as folders of recordings: each model against
Distill-MOS on the same clean windows.

    python -m benchmarks.clean_voices streamqa-s=streamqa/models/streamqa-s.onnx \
        --voice 'fish-cs-big=/usr/share/games/fillets-ng/sound/*/cs/*-v-*.ogg' \
        --json benchmarks/results/clean_voices.json

Why: ``benchmarks.real_voices`` measures the voices of the project's own splits; a user (or
a maintainer deciding whether a new package of recordings is worth training on) has voices
of their own. Each ``--voice NAME=GLOB`` is treated as one speaker, as the real voices of
the training data are (docs/data.md): its files are decoded to 16 kHz mono, trimmed, joined
in a seeded order with 0.2-0.5 s pauses into 8-12 s utterances, set to -26 dBFS active
level, and the first 7.68 s of up to ``--clean`` utterances are scored. Per voice: Distill-MOS's
mean and each model's mean offset (``streamqa score``'s path; windows it judges to hold no
speech are left out of its mean).
"""
from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import write_json
from benchmarks.real_voices import clean_offsets, named_models
from train.evaluate import CLEAN_WINDOWS


def voice_windows(name: str, pattern: str, per_voice: int, work: Path) -> list[np.ndarray]:
    """Up to ``per_voice`` clean 7.68 s windows of the recordings matching ``pattern``."""
    from train.data.joining import decode_files, group_parts, joined_audio
    from train.data.level import normalise_level
    from train.data.manifest import CLIP_SAMPLES

    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    if not files:
        raise SystemExit(f"--voice {name}: no file matches {pattern}")
    parts = [(f"{i:05d}", f) for i, f in enumerate(files)]
    folder = work / name
    lengths = decode_files(parts, folder, None, label=name)
    windows = []
    for i, group in enumerate(group_parts(name, lengths)[:per_voice]):
        audio = normalise_level(joined_audio(f"{name}-{i:04d}", folder, group))[:CLIP_SAMPLES]
        if len(audio) == CLIP_SAMPLES:  # a shorter utterance would be zero-padded for the teacher
            windows.append(audio)
    return windows


def parse_voice(text: str) -> tuple[str, str]:
    name, sep, pattern = text.partition("=")
    if not sep or not name or not pattern:
        raise argparse.ArgumentTypeError(f"--voice {text!r}: give NAME=GLOB")
    return name, pattern


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.clean_voices", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL.onnx (or MODEL.onnx, named by its stem)")
    ap.add_argument("--voice", type=parse_voice, action="append", required=True, metavar="NAME=GLOB")
    ap.add_argument("--clean", type=int, default=CLEAN_WINDOWS, help="clean windows per voice")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    models = named_models(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        windows = {name: voice_windows(name, pattern, args.clean, Path(tmp)) for name, pattern in args.voice}
    result = {"models": {n: str(p) for n, p in models.items()}, "voices": dict(args.voice),
              "clean": clean_offsets(models, {n: w for n, w in windows.items() if w})}
    for voice, row in result["clean"].items():
        cells = "".join(f"{n}: {row[n]['offset']:+.2f}  " if row[n]["offset"] is not None else f"{n}: -  "
                        for n in models)
        print(f"{voice:24s} Distill-MOS {row['distillmos_mean']:.2f} (n={row['n']})  {cells}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
