"""Clip manifests: which 7.68 s of which utterance, degraded how, with which seed.

Audio is never stored: ``render_clip`` regenerates a row's clip bit-identically from the
speech cache, so a manifest of 100k clips is a few MB and teacher labels can be cached by row.
Splits are by speaker (``fnmatch`` patterns on the speaker id), never by clip, so val/test
measure generalisation to unheard voices and languages. Babble noise is mixed from other
utterances of the SAME split, picked at build time and written into the chain step
(``"talkers"``), so a row is self-contained and no test voice leaks into training clips.

A manifest grows without invalidating what was built on it: ``--extend`` appends clips of
speakers it does not hold yet (for example the Festival voices, or the converted copies of
the training voice) after the existing rows, with
new clip ids and random streams, so every existing row and its cached labels stay valid.

CLI: ``python -m train.data.manifest --clips N --out cache/manifests/ --seed 0``, then
optionally ``python -m train.data.manifest --extend --festival --clips M --out cache/manifests/``
and ``python -m train.data.manifest --extend --converted --clips K --out cache/manifests/``.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import astuple, dataclass, fields
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from train.data.degrade import apply_chain, mild_chain, sample_chain
from train.data.speech import (Utterance, find_utterance, list_utterances, load_utterance,
                               utterance_samples)

CLIP_SAMPLES = 122880  # 7.68 s at 16 kHz: Distill-MOS's segment length
PRESENCE_FRAME = 640  # 40 ms: the students' frame, and the runtime activity gate's
SPLITS = ("train", "val", "test")
# Held out: one unseen espeak language (all variants) + one flite voice for val; the only male
# real voice (Asterisk it) + another espeak language + another flite voice for test.
# The real voices of train.data.voices: whole voices (a language of a package) held out, with
# a language's Tux Paint and KDE voices on the same side in case one person recorded both.
DEFAULT_VAL_SPEAKERS = ("espeak-sv+*", "flite-awb", "asterisk-esco", "tuxpaint-lt", "kde-lt",
                        "tuxpaint-nl", "kde-nl", "kde-cs")
DEFAULT_TEST_SPEAKERS = ("asterisk-carlo", "espeak-pl+*", "flite-slt", "asterisk-armelle",
                         "tuxpaint-ro", "tuxpaint-da", "kde-da", "kde-de")
BABBLE_TALKERS = (3, 6)
# Rows without speech (``NO_SPEECH``): noise, music, effects or silence alone, at an absolute
# level, so that a student learns what "no speech here" sounds like under every noise.
NO_SPEECH = "none"
NO_SPEECH_KINDS = ("white", "pink", "brown", "burst", "recorded", "silence")
NO_SPEECH_LEVEL_DBFS = (-75.0, -15.0)
RECORDED_SHARE = 0.4  # of noise steps in rows drawn with recorded noise


@dataclass(frozen=True)
class ClipRow:
    clip_id: str
    utterance_id: str
    speaker: str
    lang: str
    split: str
    offset: int
    chain: str  # JSON list of degradation steps
    seed: int


FIELDS = [f.name for f in fields(ClipRow)]


def split_of(speaker: str, val_speakers: Iterable[str], test_speakers: Iterable[str]) -> str:
    """The split a speaker belongs to; a speaker matching both val and test is an error.

    A converted voice ``SOURCE@NAME`` (``train.data.conversion.VOICE_CONVERSIONS``) is matched as
    itself and as its source, so a held-out voice's copies are held out with it.
    """
    names = {speaker, speaker.split("@")[0]}
    in_val = any(fnmatch(n, p) for n in names for p in val_speakers)
    in_test = any(fnmatch(n, p) for n in names for p in test_speakers)
    if in_val and in_test:
        raise ValueError(f"speaker {speaker!r} matches both val and test patterns")
    return "val" if in_val else "test" if in_test else "train"


def build_manifest(utterances: list[Utterance], n_clips: int, *, seed: int = 0,
                   val_speakers: Iterable[str] = DEFAULT_VAL_SPEAKERS,
                   test_speakers: Iterable[str] = DEFAULT_TEST_SPEAKERS,
                   cache_dir: Path = Path("cache/speech"),
                   first_index: Mapping[str, int] | None = None,
                   split_clips: Mapping[str, int] | None = None,
                   recorded_noise: bool = False,
                   chains: Callable[[np.random.Generator], list[dict]] = sample_chain,
                   even_voices: bool = False,
                   ) -> list[ClipRow]:
    """``n_clips`` rows shared among splits in proportion to their seconds of speech, or
    ``split_clips`` rows per split when given; ``chains`` draws each row's degradation.

    Within a split, utterances are drawn with probability proportional to their length (long
    prompts hold more distinct windows) and the window offset is uniform; with
    ``even_voices``, every speaker of the split gets the same share of draws (within it,
    still by length). Deterministic in (utterances, n_clips, seed, patterns). Row j of a split is ``{split}-{j:06d}`` and draws
    from random stream (seed, split, j); ``first_index`` starts j per split elsewhere than 0.
    With ``recorded_noise``, a share of the noise steps plays a recording of the row's split
    (``train.data.noises``) instead of a synthetic noise.
    """
    first_index = first_index or {}
    if n_clips < 0:
        raise ValueError("n_clips must be >= 0")
    val_speakers, test_speakers = tuple(val_speakers), tuple(test_speakers)
    by_split: dict[str, list[tuple[Utterance, int]]] = {s: [] for s in SPLITS}
    for u in utterances:
        by_split[split_of(u.speaker, val_speakers, test_speakers)].append(
            (u, utterance_samples(u, cache_dir)))
    total = sum(n for group in by_split.values() for _, n in group)
    if total == 0:
        return []
    counts = {s: int(round(n_clips * sum(n for _, n in by_split[s]) / total)) for s in SPLITS}
    counts["train"] += n_clips - sum(counts.values())
    if split_clips is not None:
        counts = {s: int(split_clips.get(s, 0)) for s in SPLITS}
    rows: list[ClipRow] = []
    for si, split in enumerate(SPLITS):
        group = by_split[split]
        if not group or counts[split] <= 0:
            continue
        weights = np.array([n for _, n in group], np.float64)
        if even_voices:
            per_voice = Counter()
            for (u, _), w in zip(group, weights):
                per_voice[u.speaker] += w
            weights /= np.array([per_voice[u.speaker] for u, _ in group])
        weights /= weights.sum()
        start = first_index.get(split, 0)
        for j in range(start, start + counts[split]):
            rng = np.random.default_rng([seed, si, j])
            u, n = group[int(rng.choice(len(group), p=weights))]
            offset = int(rng.integers(0, n - CLIP_SAMPLES + 1)) if n > CLIP_SAMPLES else 0
            chain = chains(rng)
            for step in chain:
                if step.get("op") == "noise" and step.get("kind") == "babble":
                    step["talkers"] = _pick_talkers(rng, u, group)
            if recorded_noise:
                _use_recorded_noise(rng, chain, split)
            rows.append(ClipRow(
                clip_id=f"{split}-{j:06d}", utterance_id=u.id, speaker=u.speaker, lang=u.lang,
                split=split, offset=offset, chain=json.dumps(chain, separators=(",", ":")),
                seed=int(rng.integers(0, 2**31 - 1))))
    return rows


def _use_recorded_noise(rng: np.random.Generator, chain: list[dict], split: str) -> None:
    """Turn a share of the chain's non-babble noise steps into recordings of ``split``."""
    from train.data.noises import sources_of

    for step in chain:
        if step.get("op") == "noise" and step.get("kind") != "babble" \
                and rng.random() < RECORDED_SHARE:
            pool = sources_of(split)
            step["kind"] = "recorded"
            step["source"] = pool[int(rng.integers(len(pool)))]


def no_speech_rows(split_clips: Mapping[str, int], *, seed: int = 0,
                   first_index: Mapping[str, int] | None = None,
                   kinds: Sequence[str] = NO_SPEECH_KINDS) -> list[ClipRow]:
    """Rows with no speech at all: one noise (or silence) at an absolute level, then the
    capture and network steps of an ordinary chain (codec, loss, band limit...). ``kinds``
    are drawn evenly; ``music`` is a recording from ``music_sources``.

    Row j of a split draws from random stream (seed, 10 + split, j), apart from speech rows'.
    """
    from train.data.noises import music_sources, sources_of

    first_index = first_index or {}
    rows = []
    for si, split in enumerate(SPLITS):
        start = first_index.get(split, 0)
        for j in range(start, start + int(split_clips.get(split, 0))):
            rng = np.random.default_rng([seed, 10 + si, j])
            kind = str(rng.choice(kinds))
            chain: list[dict] = []
            if kind != "silence":
                step = {"op": "noise", "kind": "recorded" if kind == "music" else kind,
                        "level_dbfs": round(float(rng.uniform(*NO_SPEECH_LEVEL_DBFS)), 3)}
                if kind in ("recorded", "music"):
                    pool = music_sources(split) if kind == "music" else sources_of(split)
                    step["source"] = pool[int(rng.integers(len(pool)))]
                chain.append(step)
            chain += [st for st in sample_chain(rng) if st["op"] not in ("noise", "gain")]
            rows.append(ClipRow(
                clip_id=f"{split}-{j:06d}", utterance_id=NO_SPEECH, speaker=NO_SPEECH, lang="",
                split=split, offset=0, chain=json.dumps(chain, separators=(",", ":")),
                seed=int(rng.integers(0, 2**31 - 1))))
    return rows


def extend_manifest(existing: list[ClipRow], utterances: list[Utterance], n_clips: int, *,
                    seed: int = 0, val_speakers: Iterable[str] = DEFAULT_VAL_SPEAKERS,
                    test_speakers: Iterable[str] = DEFAULT_TEST_SPEAKERS,
                    cache_dir: Path = Path("cache/speech"),
                    split_clips: Mapping[str, int] | None = None,
                    recorded_noise: bool = False) -> list[ClipRow]:
    """``n_clips`` new rows from the speakers that ``existing`` does not hold yet.

    Their ids and random streams continue after each split's existing rows, so the new rows
    never repeat an existing row's degradation and the existing rows (and the teacher labels
    cached for them) are untouched. Babble talkers come from the new speakers of the split
    only. Returns [] when every speaker is already there, so extending twice adds nothing.
    """
    known = {r.speaker for r in existing}
    new = [u for u in utterances if u.speaker not in known]
    if not new:
        return []
    first = Counter(r.split for r in existing)
    ids = {r.clip_id for r in existing}
    if len(ids) != len(existing) or any(f"{s}-{j:06d}" not in ids
                                        for s, n in first.items() for j in range(n)):
        raise ValueError("existing manifest ids are not {split}-000000 onwards without gaps")
    return build_manifest(new, n_clips, seed=seed, val_speakers=val_speakers,
                          test_speakers=test_speakers, cache_dir=cache_dir, first_index=first,
                          split_clips=split_clips, recorded_noise=recorded_noise)


def top_up_rows(existing: list[ClipRow], utterances: list[Utterance], *,
                mild_clips: Mapping[str, int], music_clips: Mapping[str, int], seed: int = 0,
                val_speakers: Iterable[str] = DEFAULT_VAL_SPEAKERS,
                test_speakers: Iterable[str] = DEFAULT_TEST_SPEAKERS,
                cache_dir: Path = Path("cache/speech")) -> list[ClipRow]:
    """Rows for what the real-voice extension left thin, appended once after the rows without
    speech: ``mild_clips`` clips of the real voices already present with ``mild_chain`` (the
    top of the scale, where real voices were read too low), then ``music_clips`` rows without
    speech that are music alone (what the speech output mistook for a voice).

    Returns [] when some split already holds a real-voice row after its rows without speech,
    so a resumed recipe keeps its rows and their labels.
    """
    from train.data.voices import voice_sources

    real = {v.voice for v in voice_sources()}
    seen_none: set[str] = set()
    for r in existing:
        if r.utterance_id == NO_SPEECH:
            seen_none.add(r.split)
        elif r.split in seen_none and r.speaker in real:
            return []
    known = {r.speaker for r in existing}
    voices = [u for u in utterances if u.speaker in real and u.speaker in known]
    rows = build_manifest(voices, 0, seed=seed, val_speakers=val_speakers,
                          test_speakers=test_speakers, cache_dir=cache_dir,
                          first_index=Counter(r.split for r in existing),
                          split_clips=mild_clips, chains=mild_chain)
    return rows + no_speech_rows(music_clips, seed=seed, kinds=("music",),
                                 first_index=Counter(r.split for r in existing + rows))


def even_rows(existing: list[ClipRow], utterances: list[Utterance], split_clips: Mapping[str, int], *,
              seed: int = 0, val_speakers: Iterable[str] = DEFAULT_VAL_SPEAKERS,
              test_speakers: Iterable[str] = DEFAULT_TEST_SPEAKERS,
              cache_dir: Path = Path("cache/speech")) -> list[ClipRow]:
    """``split_clips`` more degraded clips of the real voices already present, drawn evenly
    over voices (``build_manifest(even_voices=True)``, with recorded noise like the first
    real-voice rows). Why: drawn by seconds of speech, seven of the 28 training voices got
    5,263 of the 6,500 real-voice train rows and 19 fewer than 100 each, and re-weighting those
    few rows (``train.distill --balance-voices``) repeats the same clips; new rows give the
    small voices new windows and degradations.

    Appended to a split only while its last row is one without speech (the rows that
    ``top_up_rows`` or the real-voice extension end with), so a second run adds nothing.
    """
    from train.data.voices import voice_sources

    real = {v.voice for v in voice_sources()}
    last = {r.split: r for r in existing}
    wanted = {s: n for s, n in split_clips.items() if s in last and last[s].utterance_id == NO_SPEECH}
    if not any(wanted.values()):
        return []
    known = {r.speaker for r in existing}
    voices = [u for u in utterances if u.speaker in real and u.speaker in known]
    return build_manifest(voices, 0, seed=seed, val_speakers=val_speakers, test_speakers=test_speakers,
                          cache_dir=cache_dir, first_index=Counter(r.split for r in existing),
                          split_clips=wanted, recorded_noise=True, even_voices=True)


def _pick_talkers(rng: np.random.Generator, u: Utterance,
                  group: list[tuple[Utterance, int]]) -> list[str]:
    """Babble talkers from the same split, other speakers first (same speaker only if the
    split has no one else)."""
    others = [g.id for g, _ in group if g.speaker != u.speaker]
    if not others:
        others = [g.id for g, _ in group if g.id != u.id] or [u.id]
    k = min(len(others), int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1)))
    return [others[i] for i in sorted(rng.choice(len(others), size=k, replace=False))]


def write_manifest(rows: Iterable[ClipRow], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        w.writerows(astuple(r) for r in rows)


def read_manifest(path: Path) -> list[ClipRow]:
    """Rows of a manifest CSV; a wrong header or malformed row raises ValueError (with line)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != FIELDS:
            raise ValueError(f"{path}: header {header} != {FIELDS}")
        rows = []
        for line, rec in enumerate(reader, start=2):
            if len(rec) != len(FIELDS):
                raise ValueError(f"{path}:{line}: expected {len(FIELDS)} fields, got {len(rec)}")
            try:
                row = ClipRow(rec[0], rec[1], rec[2], rec[3], rec[4], int(rec[5]), rec[6],
                              int(rec[7]))
                json.loads(row.chain)
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            rows.append(row)
    return rows


@functools.lru_cache(maxsize=64)
def _load(uid: str, cache_dir: str) -> np.ndarray:
    audio = load_utterance(find_utterance(uid, Path(cache_dir)), Path(cache_dir))
    audio.flags.writeable = False
    return audio


def clip_window(audio: np.ndarray, offset: int = 0) -> np.ndarray:
    """The CLIP_SAMPLES of ``audio`` from ``offset``, zero-padded where the audio ends."""
    out = np.zeros(CLIP_SAMPLES, np.float32)
    seg = audio[offset: offset + CLIP_SAMPLES]
    out[: len(seg)] = seg
    return out


def render_clip(row: ClipRow, cache_dir: Path = Path("cache/speech")) -> np.ndarray:
    """The row's degraded clip, float32 [CLIP_SAMPLES], identical bytes on every call."""
    cache_dir = str(Path(cache_dir))
    clean = np.zeros(CLIP_SAMPLES, np.float32) if row.utterance_id == NO_SPEECH else \
        clip_window(_load(row.utterance_id, cache_dir), row.offset)
    chain = json.loads(row.chain)
    talkers = [t for step in chain for t in step.get("talkers", [])]

    def babble(rng: np.random.Generator) -> np.ndarray:
        mix = np.zeros(CLIP_SAMPLES, np.float64)
        for uid in talkers:
            audio = _load(uid, cache_dir)
            start = int(rng.integers(0, max(1, len(audio) - CLIP_SAMPLES + 1)))
            mix += clip_window(audio, start)
        return mix

    return apply_chain(clean, chain, row.seed, babble_pool=babble if talkers else None)


def clean_speech_fraction(row: ClipRow, cache_dir: Path = Path("cache/speech")) -> float:
    """Share of the clip's 40 ms frames that carry speech in the clean source, before any
    degradation: the speech-presence target, which no noise in the clip can change."""
    from streamqa.activity import speech_fraction

    if row.utterance_id == NO_SPEECH:
        return 0.0
    return speech_fraction(clip_window(_load(row.utterance_id, str(Path(cache_dir))), row.offset),
                           PRESENCE_FRAME)


def write_presence_labels(rows: Iterable[ClipRow], path: Path,
                          cache_dir: Path = Path("cache/speech")) -> int:
    """A label CSV (``clip_id,split,speaker,speech``) that ``train.distill`` joins with the
    teachers' labels: ``speech`` is 1 when the clean source has at least
    ``MIN_SPEECH_FRACTION`` of speech in the clip, else 0. Returns the row count."""
    from streamqa.activity import MIN_SPEECH_FRACTION

    rows = list(rows)
    # By utterance, so that each is loaded once (rows are in random utterance order).
    fraction = {r.clip_id: clean_speech_fraction(r, cache_dir)
                for r in sorted(rows, key=lambda r: r.utterance_id)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "split", "speaker", "speech"])
        w.writerows([r.clip_id, r.split, r.speaker, int(fraction[r.clip_id] >= MIN_SPEECH_FRACTION)]
                    for r in rows)
    return len(rows)


def parse_split_counts(text: str) -> dict[str, int]:
    """``train=4000,val=600,test=900`` -> {split: clips}."""
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        split, _, count = item.partition("=")
        if split not in SPLITS or not count.isdigit():
            raise argparse.ArgumentTypeError(f"expected SPLIT=N with SPLIT in {SPLITS}, got {item!r}")
        out[split] = int(count)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m train.data.manifest",
        description="Build train/val/test clip manifests (CSV) from the clean speech sources. "
                    "Decodes the Asterisk prompts and synthesises the TTS voices into --cache "
                    "on first use (about a minute); clips are rendered later, on demand.")
    ap.add_argument("--clips", type=int, required=True,
                    help="total number of clips over all splits (shared by seconds of speech); "
                         "with --extend, the number of clips to add")
    ap.add_argument("--extend", action="store_true",
                    help="append clips of the speakers that the manifests in --out do not hold "
                         "yet, keeping every existing row (and its cached labels) as it is; "
                         "adds nothing if there is no new speaker")
    ap.add_argument("--out", type=Path, default=Path("cache/manifests"),
                    help="output directory for train.csv, val.csv, test.csv "
                         "(default: cache/manifests)")
    ap.add_argument("--seed", type=int, default=0, help="manifest seed (default: 0)")
    ap.add_argument("--cache", type=Path, default=Path("cache/speech"),
                    help="speech cache directory (default: cache/speech)")
    ap.add_argument("--langs", default="en,es,it",
                    help="Asterisk prompt languages, comma-separated (default: en,es,it)")
    ap.add_argument("--no-tts", action="store_true",
                    help="leave out the espeak-ng and flite voices")
    ap.add_argument("--festival", action="store_true",
                    help="include the Festival voices (Debian festvox-* packages)")
    ap.add_argument("--converted", action="store_true",
                    help="include the converted copies of the en/es prompt voice (Praat's "
                         "'Change gender' to male pitches; needs praat-parselmouth)")
    ap.add_argument("--real", action="store_true",
                    help="include the real voices of train.data.voices (Asterisk es-co, "
                         "fr-armelle and it-menardi prompts, Tux Paint, KDE); their clips also "
                         "get recorded noise (train.data.noises)")
    ap.add_argument("--split-clips", type=parse_split_counts,
                    help="clips per split instead of --clips shared by seconds of speech, e.g. "
                         "train=4000,val=600,test=900")
    ap.add_argument("--no-speech-clips", type=parse_split_counts,
                    help="also append rows without speech (noise, music, effects, silence) per "
                         "split, e.g. train=1500,val=200,test=300")
    ap.add_argument("--mild-clips", type=parse_split_counts,
                    help="once, after the rows without speech: clips of the real voices already "
                         "in the manifests that are clean or lightly degraded, e.g. train=2500 "
                         "(needs --real)")
    ap.add_argument("--music-clips", type=parse_split_counts,
                    help="with --mild-clips: rows without speech that are music alone, e.g. "
                         "train=600")
    ap.add_argument("--even-clips", type=parse_split_counts,
                    help="after --mild-clips, once: degraded clips of the real voices already in "
                         "the manifests, drawn evenly over voices, e.g. train=4000 (needs --real)")
    ap.add_argument("--presence", type=Path,
                    help="write the speech-presence labels of every row as DIR/SPLIT.speech.csv")
    ap.add_argument("--val-speakers", default=",".join(DEFAULT_VAL_SPEAKERS),
                    help="comma-separated fnmatch patterns of held-out validation speakers "
                         f"(default: {','.join(DEFAULT_VAL_SPEAKERS)})")
    ap.add_argument("--test-speakers", default=",".join(DEFAULT_TEST_SPEAKERS),
                    help="comma-separated fnmatch patterns of held-out test speakers "
                         f"(default: {','.join(DEFAULT_TEST_SPEAKERS)})")
    args = ap.parse_args(argv)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"\r[{time.monotonic() - started:5.0f} s] {line:<60}", end="", file=sys.stderr,
              flush=True)

    langs = tuple(x for x in args.langs.split(",") if x)
    patterns = {"val_speakers": [p for p in args.val_speakers.split(",") if p],
                "test_speakers": [p for p in args.test_speakers.split(",") if p]}
    try:
        existing = ([r for s in SPLITS for r in read_manifest(args.out / f"{s}.csv")]
                    if args.extend else [])
        utts = list_utterances(args.cache, langs=langs, tts=not args.no_tts,
                               festival=args.festival, converted=args.converted,
                               real=args.real, progress=progress)
        extra = {"split_clips": args.split_clips, "recorded_noise": args.real}
        if args.extend:
            rows = existing + extend_manifest(existing, utts, args.clips, seed=args.seed,
                                              cache_dir=args.cache, **patterns, **extra)
        else:
            rows = build_manifest(utts, args.clips, seed=args.seed, cache_dir=args.cache,
                                  **patterns, **extra)
        if args.no_speech_clips and not any(r.utterance_id == NO_SPEECH for r in rows):
            rows += no_speech_rows(args.no_speech_clips, seed=args.seed,
                                   first_index=Counter(r.split for r in rows))
        if args.mild_clips or args.music_clips:
            rows += top_up_rows(rows, utts, mild_clips=args.mild_clips or {},
                                music_clips=args.music_clips or {}, seed=args.seed,
                                cache_dir=args.cache, **patterns)
        if args.even_clips:
            rows += even_rows(rows, utts, args.even_clips, seed=args.seed, cache_dir=args.cache, **patterns)
    except (ValueError, OSError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    for split in SPLITS:
        part = [r for r in rows if r.split == split]
        added = len(part) - sum(r.split == split for r in existing)
        if added or not args.extend:  # an extension that adds nothing leaves the file alone
            write_manifest(part, args.out / f"{split}.csv")
        print(f"{split}: {len(part)} clips ({added} new), {len({r.speaker for r in part})} "
              f"speakers -> {args.out / f'{split}.csv'}")
        if args.presence:
            out = args.presence / f"{split}.speech.csv"
            print(f"  speech presence of {write_presence_labels(part, out, args.cache)} "
                  f"clips -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
