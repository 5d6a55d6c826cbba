"""Render rows without speech as training rows of their own: a label CSV and the audio cache.

    python -m train.data.no_speech_set --clips train=3000 \
        --kinds recorded,music,tones,siren,synth-music --out runs/r10/train.hard_none.csv

Why: the student's encoder learns what "no speech" sounds like from the manifest's 1,600 rows
without speech, mostly synthetic noise; the presence refit (``train.presence_refit``) can only
re-weigh what that encoder already tells apart. These rows (``train.data.manifest.no_speech_rows``
of the given kinds, their own random streams and clip ids) go to ``train.distill --labels``
beside the manifest's: the CSV has the label files' columns plus ``speech`` = 0, and every
quality label empty (a quality label of noise alone means nothing), so they teach the presence
output alone. No teacher runs; each clip is rendered and kept in ``--audio-dir`` by content hash,
as ``train.label`` keeps its clips, so training reads it like any labelled clip.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from train.data.manifest import no_speech_rows, parse_split_counts, render_clip
from train.label import CSV_COLUMNS, clip_sha256, save_cached_audio

SEED = 23  # apart from the manifest's rows (seed 0) and the presence refit's extra renders (17)
FIRST_INDEX = 800_000  # clip ids far above any manifest row's and below the refit's extras


def write_rows(clips: dict[str, int], kinds: tuple[str, ...], out: Path, audio_dir: Path,
               speech_dir: Path = Path("cache/speech")) -> int:
    """Render the rows, cache their audio, write the CSV; returns how many rows it holds."""
    rows = no_speech_rows(clips, seed=SEED, first_index=dict.fromkeys(clips, FIRST_INDEX), kinds=kinds)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_COLUMNS, "speech"])
        writer.writeheader()
        for i, row in enumerate(rows, 1):
            audio = render_clip(row, speech_dir)
            sha = clip_sha256(audio)
            if not (audio_dir / f"{sha}.npy").exists():
                save_cached_audio(audio, sha, audio_dir)
            writer.writerow({"clip_id": row.clip_id, "sha256": sha, "split": row.split, "speaker": row.speaker,
                             "speech": 0})
            if i % 250 == 0 or i == len(rows):
                print(f"{i}/{len(rows)} rows rendered", file=sys.stderr, flush=True)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    from train.presence_refit import ALL_KINDS, parse_kinds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=parse_split_counts, required=True, help="rows per split, e.g. train=3000")
    ap.add_argument("--kinds", type=parse_kinds, required=True,
                    help=f"what the rows are, drawn evenly (comma-separated, of {','.join(ALL_KINDS)})")
    ap.add_argument("--out", type=Path, required=True, help="the label CSV to write")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--speech-dir", type=Path, default=Path("cache/speech"))
    args = ap.parse_args(argv)
    n = write_rows(args.clips, args.kinds, args.out, args.audio_dir, args.speech_dir)
    print(f"{n} rows without speech -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
