"""Pseudo-label clips with the teachers: ``python -m train.label``.

Labelling tens of thousands of clips takes hours on a CPU, so the job is built to be killed and
restarted and to be split across processes:

- every label is appended to a JSONL file of the cache directory, keyed by the sha256 of the
  rendered clip's float32 bytes (content, not name: a changed degradation chain gets new labels);
  each shard appends to its own file, so processes never write the same file;
- every clip's "key" (its manifest row, or a user file's path/size/mtime) is recorded with its
  sha256, so a restart knows which clips are done without rendering them again;
- the output CSV is always assembled from the whole cache, so it includes other shards' work.

Rendered clips are also kept as int16 ``<audio-dir>/<sha256>.npy`` (round(x * 32768), saturated)
so that training reads them instead of re-running the degradation chain; see ``load_cached_audio``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from train.teachers.base import TEACHER_NAMES, Teacher, get_teacher, teacher_class

# The labels CSV layout other stages read. Distill-MOS's and DNSMOS's outputs keep their bare
# names (the students' targets); outputs of any other teacher get its name as a prefix so that
# e.g. XLS-R-SQA's "mos" never overwrites Distill-MOS's. Fixed here rather than read from the
# teacher classes so that writing the CSV never imports torch.
CSV_COLUMNS = ("clip_id", "sha256", "split", "speaker", "mos", "sig", "bak", "ovrl")
BARE_OUTPUTS = {"distillmos": ("mos",), "dnsmos": ("sig", "bak", "ovrl"), "dnsmos1": ("sig", "bak", "ovrl")}
DEFAULT_TEACHERS = "distillmos,dnsmos"
INT16_SCALE = 32768.0  # the usual PCM convention (soundfile's too); +1.0 saturates at 32767


@dataclass(frozen=True)
class Item:
    """One clip to label. ``key`` identifies what determines its audio; ``render`` makes it."""

    clip_id: str
    split: str
    speaker: str
    key: str
    render: Callable[[], np.ndarray]


def manifest_items(path: Path, speech_cache: Path = Path("cache/speech")) -> list[Item]:
    """Clips of a generated-data manifest, rendered deterministically from their rows."""
    from train.data.manifest import read_manifest, render_clip

    return [
        Item(row.clip_id, row.split, row.speaker, "manifest:" + repr(row),
             lambda row=row: render_clip(row, speech_cache))
        for row in read_manifest(path)
    ]


def corpus_items(path: Path) -> list[Item]:
    """Files of a user corpus CSV ``path[,mos]`` (``train.data.corpus.read_corpus_csv``).

    The clip id is the file's path as the CSV resolves it. The human ``mos`` is not a teacher
    label and is not copied; split and speaker are empty. A file's key includes its size and
    modification time, so a replaced recording is scored again.
    """
    from train.data.corpus import load_audio_16k, read_corpus_csv

    items: list[Item] = []
    for file, _mos in read_corpus_csv(path):
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no such audio file {file}")
        stat = file.stat()
        key = f"file:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        items.append(Item(str(file), "", "", key, lambda file=file: load_audio_16k(file)))
    return items


def clip_sha256(audio: np.ndarray) -> str:
    """The cache key of a clip: sha256 of its float32 samples."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def save_cached_audio(audio: np.ndarray, sha: str, audio_dir: Path) -> None:
    """Store a clip as int16 ``<audio_dir>/<sha>.npy``, atomically (a kill leaves no half file)."""
    audio_dir.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(audio * INT16_SCALE), -32768, 32767).astype(np.int16)
    tmp = audio_dir / f".{sha}.{os.getpid()}.tmp.npy"
    np.save(tmp, pcm)
    os.replace(tmp, audio_dir / f"{sha}.npy")


def load_cached_audio(sha: str, audio_dir: Path) -> np.ndarray:
    """The float32 clip stored by ``save_cached_audio``."""
    return np.load(audio_dir / f"{sha}.npy").astype(np.float32) / INT16_SCALE


class LabelCache:
    """All labels under one directory: reads every shard's JSONL, appends to its own.

    Lines are ``{"key": ..., "sha256": ...}`` (which clip has which content) and
    ``{"sha256": ..., "teacher": ..., "scores": {...}}``. A line cut short by a kill is skipped
    when read, and a newline is added before appending after it.
    """

    def __init__(self, root: Path, shard: tuple[int, int] = (0, 1)) -> None:
        self.root = root
        self.path = root / f"labels-{shard[0]}-of-{shard[1]}.jsonl"
        self.sha_by_key: dict[str, str] = {}
        self.scores: dict[tuple[str, str], dict[str, float]] = {}
        self._file: TextIO | None = None
        self._last_flush = time.monotonic()
        self.reload()

    def reload(self) -> None:
        """Re-read every shard's file (other processes may have added labels)."""
        self.sha_by_key.clear()
        self.scores.clear()
        for file in sorted(self.root.glob("labels-*.jsonl")):
            with open(file) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if "key" in record:
                        self.sha_by_key[record["key"]] = record["sha256"]
                    elif "teacher" in record:
                        self.scores[(record["sha256"], record["teacher"])] = record["scores"]

    def _append(self, record: dict) -> None:
        if self._file is None:
            self.root.mkdir(parents=True, exist_ok=True)
            needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._file = open(self.path, "a")
            if needs_newline:
                self._file.write("\n")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def add_clip(self, key: str, sha: str) -> None:
        self.sha_by_key[key] = sha
        self._append({"key": key, "sha256": sha})

    def add_scores(self, sha: str, teacher: str, scores: dict[str, float]) -> None:
        self.scores[(sha, teacher)] = scores
        self._append({"sha256": sha, "teacher": teacher, "scores": scores})

    def flush(self) -> None:
        """Make everything appended so far survive a kill of this process or the machine."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._last_flush = time.monotonic()

    def flush_if_due(self, seconds: float = 2.0) -> None:
        """Flush unless that was done in the last ``seconds``: a resumed run walks thousands of
        cached clips per second and one fsync each would dominate it."""
        if time.monotonic() - self._last_flush >= seconds:
            self.flush()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


class Progress:
    """Prints ``done/total, rate, ETA`` to stderr at most every ``interval`` seconds."""

    def __init__(self, total: int, label: str, *, interval: float = 5.0, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.interval, self.stream = total, label, interval, stream
        self.done = self.scored = self.cached = 0
        self.shown = -1  # ``done`` at the last printed line: the final forced line is not a repeat
        self.start = self.last = time.monotonic()

    def update(self, *, scored: int = 0, cached: int = 0, force: bool = False) -> None:
        self.scored += scored
        self.cached += cached
        self.done += scored + cached
        now = time.monotonic()
        if (not force and now - self.last < self.interval) or (force and self.done == self.shown):
            return
        self.last, self.shown = now, self.done
        rate = self.scored / max(now - self.start, 1e-9)
        left = self.total - self.done
        eta = f"{left / rate / 60:.1f} min" if rate > 0 else "?"
        print(
            f"[label {self.label}] {self.done}/{self.total} clips ({self.scored} scored, "
            f"{self.cached} cached) {rate:.2f} clips/s ETA {eta}",
            file=self.stream,
            flush=True,
        )


def shard_items(items: Sequence[Item], index: int, count: int) -> list[Item]:
    """Every ``count``-th item starting at ``index``: shards are disjoint and together complete."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} not in 0..{count - 1}")
    return list(items[index::count])


def label(
    items: Sequence[Item],
    teachers: Sequence[Teacher],
    cache: LabelCache,
    *,
    audio_dir: Path | None,
    batch_size: int = 4,
    progress: Progress | None = None,
) -> None:
    """Score every item with every teacher that has no cached label for its content yet.

    Labels are flushed to the cache after each batch, so a kill loses at most one batch.
    """
    progress = progress or Progress(len(items), "", interval=float("inf"))
    pending: dict[str, tuple[np.ndarray, list[Teacher]]] = {}

    def score_pending() -> None:
        for teacher in teachers:
            shas = [sha for sha, (_, need) in pending.items() if teacher in need]
            if shas:
                results = teacher.score_batch([pending[sha][0] for sha in shas])
                for sha, scores in zip(shas, results):
                    cache.add_scores(sha, teacher.name, {k: float(v) for k, v in scores.items()})
        cache.flush()
        progress.update(scored=len(pending))
        pending.clear()

    for item in items:
        sha = cache.sha_by_key.get(item.key)
        audio = None
        if sha is None:
            audio = np.ascontiguousarray(item.render(), dtype=np.float32)
            sha = clip_sha256(audio)
            cache.add_clip(item.key, sha)
        missing = [t for t in teachers if (sha, t.name) not in cache.scores]
        store = audio_dir is not None and not (audio_dir / f"{sha}.npy").exists()
        if (not missing and not store) or sha in pending:
            cache.flush_if_due()
            progress.update(cached=1)
            continue
        if audio is None:
            audio = np.ascontiguousarray(item.render(), dtype=np.float32)
            if clip_sha256(audio) != sha:
                raise RuntimeError(f"{item.clip_id}: rendering is not deterministic (sha256 changed)")
        if store:
            save_cached_audio(audio, sha, audio_dir)
        if not missing:
            cache.flush_if_due()
            progress.update(cached=1)
            continue
        pending[sha] = (audio, missing)
        if len(pending) >= batch_size:
            score_pending()
    if pending:
        score_pending()
    cache.flush()
    progress.update(force=True)


def output_columns(teacher_names: Sequence[str]) -> list[str]:
    """CSV columns: ``CSV_COLUMNS``, then prefixed outputs of any other teacher asked for."""
    columns = list(CSV_COLUMNS)
    for name in teacher_names:
        if name not in BARE_OUTPUTS:
            columns += [f"{name}_{o}" for o in teacher_class(name).outputs]
    return columns


def assemble(items: Iterable[Item], teacher_names: Sequence[str], cache: LabelCache, out: Path) -> int:
    """Write the CSV of every item that has all requested labels in the cache; return how many
    items are still missing (not rendered or not scored yet, e.g. another shard still running).
    A teacher not requested leaves its columns empty."""
    columns = output_columns(teacher_names)
    rows = []
    missing = 0
    for item in items:
        sha = cache.sha_by_key.get(item.key)
        labels = {name: cache.scores.get((sha, name)) for name in teacher_names} if sha else {}
        if sha is None or any(v is None for v in labels.values()):
            missing += 1
            continue
        row = {"clip_id": item.clip_id, "sha256": sha, "split": item.split, "speaker": item.speaker}
        for name, scores in labels.items():
            for output, value in scores.items():
                column = output if name in BARE_OUTPUTS else f"{name}_{output}"
                row[column] = f"{value:.6f}"
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    return missing


def import_labels(paths: Sequence[Path], teacher_names: Sequence[str], cache: LabelCache) -> int:
    """Add the labels of committed CSVs (by content hash) to the cache; returns how many.

    Labels are keyed by the sha256 of the rendered clip, so a fresh machine that renders a
    manifest to the same bytes reuses them and runs no teacher on those clips; a clip that
    renders differently keeps no label and is scored anew. Only teachers whose outputs keep
    their bare names (``BARE_OUTPUTS``) can be read back from the CSV layout.
    """
    added = 0
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                sha = row.get("sha256", "")
                for name in teacher_names:
                    outputs = BARE_OUTPUTS.get(name)
                    if not sha or outputs is None or (sha, name) in cache.scores:
                        continue
                    if all(row.get(o) not in (None, "") for o in outputs):
                        cache.add_scores(sha, name, {o: float(row[o]) for o in outputs})
                        added += 1
    cache.flush()
    return added


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants I/N, got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return index, count


def parse_rows(text: str) -> list[slice]:
    """``"A:B[,C:D...]"`` -> [slice(A, B), ...] with 0 <= A <= B (either side may be empty):
    the parts of one kind that a manifest grown in several extensions holds apart."""
    out = []
    for part in text.split(","):
        try:
            a, b = (int(x) if x else None for x in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--rows wants A:B[,C:D...], got {text!r}") from None
        if (a is not None and a < 0) or (b is not None and b < (a or 0)):
            raise argparse.ArgumentTypeError(f"--rows {part}: need 0 <= A <= B")
        out.append(slice(a, b))
    return out


def parse_teachers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TEACHER_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"--teachers: unknown {unknown or text!r}; known: {', '.join(TEACHER_NAMES)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.label", description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="generated-data manifest CSV")
    source.add_argument("--corpus", type=Path, help="user corpus CSV: path[,mos]")
    p.add_argument("--teachers", type=parse_teachers, default=parse_teachers(DEFAULT_TEACHERS),
                   help=f"comma-separated, from {', '.join(TEACHER_NAMES)} (default {DEFAULT_TEACHERS})")
    p.add_argument("--render-only", action="store_true",
                   help="run no teacher: only render and store the clips and list them in --out "
                        "with empty label columns (rows trained on labels of another kind, such as "
                        "speech presence, need audio but no teacher)")
    p.add_argument("--out", type=Path, required=True, help="labels CSV, assembled from the cache")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="I/N: label every N-th clip from I")
    p.add_argument("--limit", type=int, default=None, help="only the first K clips (before sharding)")
    p.add_argument("--rows", type=parse_rows, default=None,
                   help="A:B[,C:D...]: only rows A..B-1 (and C..D-1...) of the manifest (before --limit "
                        "and sharding), e.g. the rows an --extend appended")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per teacher (default 1)")
    p.add_argument("--batch", type=int, default=4, help="clips per teacher call (default 4)")
    p.add_argument("--cache", type=Path, default=Path("cache/labels"), help="label cache directory")
    p.add_argument("--speech-cache", type=Path, default=Path("cache/speech"),
                   help="speech sources that manifest rows are rendered from")
    p.add_argument("--audio-dir", type=Path, default=Path("cache/audio"), help="where --keep-audio stores clips")
    p.add_argument("--keep-audio", action=argparse.BooleanOptionalAction, default=True,
                   help="store rendered clips as int16 .npy (default on)")
    p.add_argument("--assemble", action="store_true",
                   help="only write --out from the cache; score nothing (with --shard: that shard's rows only)")
    p.add_argument("--import-labels", type=Path, nargs="+", default=[],
                   help="label CSVs written before (e.g. train/labels/*.csv): their labels are "
                        "reused for clips that render to the same bytes, so only new clips meet a teacher")
    p.add_argument("--xlsr-checkpoint", type=Path, help="local XLS-R folder for the xlsr_sqa teacher")
    p.add_argument("--device", default="cpu", help="torch device for xlsr_sqa (e.g. cuda)")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    return p


def make_teachers(names: Sequence[str], args: argparse.Namespace) -> list[Teacher]:
    teachers = []
    for name in names:
        if name == "xlsr_sqa":
            if args.xlsr_checkpoint is None:
                raise SystemExit("the xlsr_sqa teacher needs --xlsr-checkpoint DIR (see docs/teachers.md)")
            teachers.append(get_teacher(name, checkpoint=args.xlsr_checkpoint, threads=args.threads, device=args.device))
        else:
            teachers.append(get_teacher(name, threads=args.threads))
    return teachers


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    items = manifest_items(args.manifest, args.speech_cache) if args.manifest else corpus_items(args.corpus)
    if args.rows is not None:
        items = [item for part in args.rows for item in items[part]]
    if args.limit is not None:
        items = items[: args.limit]
    index, count = args.shard
    if args.render_only:
        args.teachers = []
    cache = LabelCache(args.cache, args.shard)
    try:
        if args.import_labels:
            print(f"[label] imported {import_labels(args.import_labels, args.teachers, cache)} labels",
                  file=sys.stderr)
        if not args.assemble:
            mine = shard_items(items, index, count)
            teachers = make_teachers(args.teachers, args)
            progress = Progress(len(mine), f"{index}/{count}", interval=args.progress_every)
            label(mine, teachers, cache,
                  audio_dir=args.audio_dir if args.keep_audio else None,
                  batch_size=args.batch, progress=progress)
    finally:
        cache.close()
    cache.reload()
    if args.assemble and count > 1:  # assembling one shard: only its rows, whatever else is cached
        items = shard_items(items, index, count)
    missing = assemble(items, args.teachers, cache, args.out)
    print(f"[label] wrote {len(items) - missing} rows to {args.out}"
          + (f"; {missing} clips not labelled yet (other shards?): rerun with --assemble when they finish" if missing else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
