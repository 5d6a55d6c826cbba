"""The whole student recipe, end to end: data -> teacher labels -> distillation -> ONNX -> card.

    python -m train.pipeline --out runs/release                  # make train
    python -m train.pipeline --mini --out /tmp/mini              # the CI miniature

Every stage is resumable: the manifest is written once, labels are cached by content hash
(a killed run continues where it stopped), and a student whose checkpoint exists is not
retrained. Labelling runs ``--jobs`` shard processes side by side. ``--ship NAME`` copies
that student's ONNX into streamqa/models with its model card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from train.data.manifest import parse_split_counts
from train.export import export_onnx, load_checkpoint, quantize_int8, sha256_file
from train.presence_refit import ALL_KINDS, keep_record, keep_share
from train.students import FAMILY, count_params, macs_per_second

SPLITS = ("train", "val", "test")
MODELS_DIR = Path(__file__).resolve().parent.parent / "streamqa" / "models"


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def make_manifest(args: argparse.Namespace) -> Path:
    """The base manifest (``--clips``), then ``--festival-clips`` appended from the Festival
    voices, ``--real-clips`` per split from the real voices with ``--no-speech-clips`` rows
    without speech, then ``--mild-clips`` of the real voices with light degradations and
    ``--music-clips`` of music alone, then ``--even-clips`` of the real voices drawn evenly
    over voices, and last ``--converted-clips`` from the converted copies of the Asterisk
    prompt voice (last, so that adding them leaves every earlier row where it was: the rows
    round 16 of docs/experiments/2026-12-real-voices.md labelled); appending is a no-op once
    they are there, so a resumed run keeps its rows. The speech-presence labels of every row
    go to ``--labels`` as ``SPLIT.speech.csv``."""
    mdir = args.cache / "manifests"
    common = ["--out", str(mdir), "--seed", str(args.seed), "--cache", str(args.speech_cache)]
    manifest = [sys.executable, "-m", "train.data.manifest"]
    if not all((mdir / f"{s}.csv").exists() for s in SPLITS):
        _run([*manifest, "--clips", str(args.clips), *common])
    if args.festival_clips:
        _run([*manifest, "--extend", "--festival", "--clips", str(args.festival_clips), *common])
    real = ["--real"] if args.real_clips else []
    if args.real_clips:
        _run([*manifest, "--extend", "--real", "--clips", "0", "--split-clips", args.real_clips,
              "--no-speech-clips", args.no_speech_clips or "", *common])
    if args.mild_clips or args.music_clips:
        _run([*manifest, "--extend", "--real", "--clips", "0", "--mild-clips", args.mild_clips or "",
              "--music-clips", args.music_clips or "", *common])
    if args.even_clips:
        _run([*manifest, "--extend", "--real", "--clips", "0", "--even-clips", args.even_clips, *common])
    if args.converted_clips:
        _run([*manifest, "--extend", "--converted", "--clips", str(args.converted_clips), *common])
    presence = [args.labels / f"{s}.speech.csv" for s in SPLITS]
    if not all(p.exists() and p.stat().st_mtime >= (mdir / p.name.replace(".speech", "")).stat().st_mtime
               for p in presence):
        _run([*manifest, "--extend", *real, "--clips", "0", "--presence", str(args.labels), *common])
    return mdir


def row_segments(manifest: Path) -> dict[str, list[slice]]:
    """Where a manifest's parts lie, as runs of consecutive rows in order: ``base`` (the TTS
    and Asterisk rows), ``real`` (the real voices' rows) and ``none`` (rows without speech).
    Each extension appends its runs, so a kind may lie in several (real, none, real, none)."""
    from train.data.manifest import NO_SPEECH, read_manifest
    from train.data.voices import voice_sources

    real = {v.voice for v in voice_sources()}
    runs: dict[str, list[slice]] = {"base": [], "real": [], "none": []}
    kinds = ["none" if r.utterance_id == NO_SPEECH else "real" if r.speaker in real else "base"
             for r in read_manifest(manifest)]
    start = 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            runs[kinds[start]].append(slice(start, i))
            start = i
    return runs


def split_runs(runs: list[slice], k: int | None) -> tuple[list[slice], list[slice]]:
    """(the first ``k`` rows of ``runs``, the rest), both as runs; k None: (all, none)."""
    head: list[slice] = []
    tail: list[slice] = []
    for run in runs:
        take = run.stop - run.start if k is None else max(0, min(k, run.stop - run.start))
        if take:
            head.append(slice(run.start, run.start + take))
        if run.start + take < run.stop:
            tail.append(slice(run.start + take, run.stop))
        k = None if k is None else k - take
    return head, tail


def committed_labels(labels: Path) -> list[Path]:
    """Every label CSV under ``labels`` and its ``snapshots/``: what ``train.label`` may reuse."""
    return sorted(labels.glob("*.csv")) + sorted((labels / "snapshots").glob("*.csv"))


def _label(args: argparse.Namespace, manifest: Path, out: Path, rows: list[slice], teachers: list[str],
           *, shard: str | None = None) -> Path:
    """Label ``rows`` of a manifest in ``--jobs`` shard processes (or one given ``shard``),
    reusing the committed labels by content hash, then assemble ``out`` from the cache. An
    empty teacher list only renders and stores the clips."""
    common = [sys.executable, "-m", "train.label", "--manifest", str(manifest),
              "--rows", ",".join(f"{r.start}:{r.stop}" for r in rows), "--cache", str(args.cache / "labels"),
              "--audio-dir", str(args.cache / "audio"), "--speech-cache", str(args.speech_cache)]
    common += ["--teachers", ",".join(teachers)] if teachers else ["--render-only"]
    imports = committed_labels(args.labels)
    shards = [shard] if shard else [f"{i}/{args.jobs}" for i in range(args.jobs)]
    reuse = ["--import-labels", *map(str, imports)] if imports else []
    procs = [subprocess.Popen(common + ["--out", str(out.with_suffix(f".part{i}.csv")), "--shard", sh, *reuse])
             for i, sh in enumerate(shards)]
    if any(p.wait() for p in procs):
        raise SystemExit(f"labelling {manifest} rows {','.join(f'{r.start}:{r.stop}' for r in rows)} failed")
    _run(common + ["--out", str(out), "--assemble"] + (["--shard", shard] if shard else []))
    for i in range(len(shards)):
        out.with_suffix(f".part{i}.csv").unlink(missing_ok=True)
    return out


def make_labels(args: argparse.Namespace, mdir: Path) -> list[Path]:
    """The label CSVs of every split, part by part (val and test first: evaluation needs them
    whole), written to ``--labels``:

    - ``SPLIT.distillmos.csv`` / ``SPLIT.dnsmos1.csv``: the base rows (val and test: the first
      ``--eval-clips`` of each; train: every row, or one ``--base-shard``), whose labels are mostly
      committed and are reused by content hash; on train's base rows DNSMOS is only read back
      unless ``--dnsmos-train`` (it costs as much as Distill-MOS and was run on a subset);
    - ``SPLIT.real.distillmos.csv``: the real voices' rows (Distill-MOS);
    - ``SPLIT.none.dnsmos1.csv`` and ``SPLIT.none.render.csv``: rows without speech, the first
      ``--none-dnsmos`` (train) with DNSMOS for their ``bak``, the rest only rendered;
    - ``SPLIT.speech.csv`` (from make_manifest): speech presence of every row.
    """
    outs = []
    for split in ("val", "test", "train"):
        manifest = mdir / f"{split}.csv"
        seg = row_segments(manifest)
        shard = args.base_shard if split == "train" else None
        limit = args.eval_clips.get(split, 0)
        base, _ = split_runs(seg["base"], limit if split != "train" and limit else None)
        outs.append(_label(args, manifest, args.labels / f"{split}.distillmos.csv", base, ["distillmos"], shard=shard))
        dnsmos = args.labels / f"{split}.dnsmos1.csv"
        committed = committed_labels(args.labels)
        if split == "train" and not args.dnsmos_train and committed:  # read back the committed DNSMOS labels
            _run([sys.executable, "-m", "train.label", "--manifest", str(manifest),
                  "--rows", ",".join(f"{r.start}:{r.stop}" for r in base),
                  "--cache", str(args.cache / "labels"), "--teachers", "dnsmos1", "--out", str(dnsmos), "--assemble",
                  *(["--shard", shard] if shard else []), "--import-labels", *map(str, committed)])
            outs.append(dnsmos)
        else:
            outs.append(_label(args, manifest, dnsmos, base, ["dnsmos1"], shard=shard))
        real, _ = split_runs(seg["real"], args.real_train_rows if split == "train" else None)
        if real:
            outs.append(_label(args, manifest, args.labels / f"{split}.real.distillmos.csv", real, ["distillmos"]))
        labelled, rendered = split_runs(seg["none"], args.none_dnsmos if split == "train" else None)
        if labelled:
            outs.append(_label(args, manifest, args.labels / f"{split}.none.dnsmos1.csv", labelled, ["dnsmos1"]))
        if rendered:
            outs.append(_label(args, manifest, args.labels / f"{split}.none.render.csv", rendered, []))
        outs.append(args.labels / f"{split}.speech.csv")
    return outs


def hard_no_speech(args: argparse.Namespace) -> list[Path]:
    """``SPLIT.hard_none.csv`` for ``--hard-no-speech``: rows without speech of every kind the
    presence output confused with a voice (recorded effects and music, signalling tones,
    sirens, synthetic tunes), trained on like the manifest's (``train.data.no_speech_set``).
    Rendered unless the CSV and every clip of it are already there."""
    from train.distill import read_labels

    outs = []
    for split, n in parse_split_counts(args.hard_no_speech or "").items():
        out = args.labels / f"{split}.hard_none.csv"
        rows = read_labels(out) if out.exists() else []
        if len(rows) != n or not all((args.cache / "audio" / f"{r['sha256']}.npy").exists() for r in rows):
            _run([sys.executable, "-m", "train.data.no_speech_set", "--clips", f"{split}={n}",
                  "--kinds", ",".join(ALL_KINDS), "--out", str(out), "--audio-dir", str(args.cache / "audio"),
                  "--speech-dir", str(args.speech_cache)])
        outs.append(out)
    return outs


def train_student(args: argparse.Namespace, name: str, labels: list[Path]) -> Path:
    """Distil one family member (or a config JSON in --out) unless its checkpoint exists."""
    ckpt = args.out / name / "student.pt"
    config = args.out / f"{name}.json"
    if not ckpt.exists():
        _run([sys.executable, "-m", "train.distill", "--labels", *map(str, labels),
              "--student", str(config) if config.exists() else name,
              "--out", str(ckpt), "--epochs", str(args.epochs), "--audio-dir", str(args.cache / "audio"),
              "--threads", str(args.train_threads), "--warp", str(args.warp), "--teacher", args.teachers.replace(",", "+"),
              *(["--balance-voices", "--balance-cap", str(args.balance_cap)] if args.balance_voices else []),
              *(["--real-share", str(args.real_share)] if args.real_share is not None else []),
              *(["--dropout", str(args.dropout)] if args.dropout is not None else []),
              *(["--feature-targets", str(args.feature_targets), "--feature-weight", str(args.feature_weight)]
                if args.feature_targets else [])])
    refit = load_checkpoint(ckpt)[1].get("presence_refit")
    if args.presence_refit and (refit is None or refit.get("mlp", 0) != args.presence_mlp
                                or refit.get("keep_speech") != keep_record(args.presence_keep)):
        # the refit reads the manifest's clips and renders its own extra rows; the hard rows
        # without speech taught the encoder and stay out, as in the refit that was evaluated
        # (round 10 of docs/experiments/2026-12-real-voices.md)
        manifest_labels = [p for p in labels if not p.name.endswith(".hard_none.csv")]
        _run([sys.executable, "-m", "train.presence_refit", str(ckpt), "--out", str(ckpt),
              "--keep-speech", str(args.presence_keep),
              *(["--mlp", str(args.presence_mlp)] if args.presence_mlp else []),
              "--labels", *map(str, manifest_labels), "--extra", args.presence_refit,
              "--audio-dir", str(args.cache / "audio"), "--speech-dir", str(args.speech_cache),
              "--cache", str(ckpt.with_name("presence_hidden.pt")),
              "--json", str(ckpt.with_name("presence_refit.json")), "--threads", str(args.train_threads)])
    return ckpt


def export_and_evaluate(args: argparse.Namespace, name: str, ckpt: Path, labels: list[Path]) -> dict:
    from train.evaluate import evaluate_onnx

    model, meta = load_checkpoint(ckpt)
    onnx_path = export_onnx(model, args.out / name / f"streamqa-{name}.onnx", {**meta, "name": f"streamqa-{name}"})
    result = {
        "name": f"streamqa-{name}",
        "params": count_params(model),
        "macs_per_second": macs_per_second(model.cfg),
        "outputs": list(model.cfg.outputs),
        "test": evaluate_onnx(onnx_path, labels, args.cache / "audio"),
        "onnx": str(onnx_path),
        # val: what picked it
        "training": {**{k: meta.get(k) for k in ("training_data", "epochs", "warp", "val")}, "dropout": model.cfg.dropout},
    }
    if args.int8:
        q = quantize_int8(onnx_path, onnx_path.with_suffix(".int8.onnx"))
        result["test_int8"] = evaluate_onnx(q, labels, args.cache / "audio")
    (args.out / name / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def ship(result: dict, teachers: str, training_data: str, command: str, *, extra: dict | None = None) -> Path:
    """Copy the ONNX into streamqa/models and write its card (sha256 checked at load).
    ``result["outputs"]`` names the card's outputs (default: the students' four); ``extra``
    adds figures measured after the pipeline (e.g. per-voice accuracy from benchmarks)."""
    src = Path(result["onnx"])
    dst = MODELS_DIR / src.name
    shutil.copyfile(src, dst)
    test = result["test"]
    outputs = list(result.get("outputs", ["mos", "sig", "bak", "ovrl"]))
    card = {
        "name": result["name"],
        "file": dst.name,
        "sha256": sha256_file(dst),
        "params": result["params"],
        "macs_per_second": result["macs_per_second"],
        "outputs": outputs,
        "teacher": teachers,
        "training_data": training_data,
        "accuracy": {f"{k}_{m}": test[k][m] for k in outputs if k in test for m in ("pcc", "srcc")},
        "evaluated_on": evaluated_on(test),
        "command": command,
        **(extra or {}),
    }
    (MODELS_DIR / f"{result['name']}.json").write_text(json.dumps(card, indent=2) + "\n")
    return dst


def evaluated_on(test: dict) -> str:
    """The card's test-set line: the clips the figures rest on, which are fewer than those
    labelled when the model judged some to hold no speech (they get no score, so no error)."""
    mos = test.get("mos", {})
    scored = mos.get("n", test["clips"])
    return (f"{scored} of {test['clips']} held-out test clips (speakers never seen in training; "
            f"{mos.get('no_speech', 0)} judged to hold no speech)")


def write_models_doc(path: Path = MODELS_DIR.parent.parent / "docs" / "models.md") -> None:
    """docs/models.md: one model card per bundled student, from the cards beside the ONNX files."""
    lines = [
        "# Bundled models",
        "",
        "Generated by `python -m train.pipeline --ship NAME` from `streamqa/models/*.json`; the",
        "runtime refuses a bundled ONNX file whose sha256 differs from its card.",
        "",
        "## Metadata contract",
        "",
        "A student is one ONNX graph `(audio[B, H], state_*) -> (scores[B, K], next_*)` whose",
        "`metadata_props` tell the runtime how to run it (`streamqa/model.py` refuses a file that",
        "breaks them, naming the key), so a retrained or user-made model drops in unchanged:",
        "",
        "| key | meaning |",
        "| --- | --- |",
        "| `sample_rate`, `hop_samples`, `frame_samples` | positive integers: the rate of `audio`, the default hop, and the frame every hop is a multiple of |",
        "| `window_seconds` | the default window each score judges |",
        "| `outputs` | comma-separated names of the `scores` columns: `mos` first, no name twice |",
        "| `version` | format version, `1` |",
        "| `name`, `teacher`, `params`, `macs_per_second` | optional, shown in `streamqa models` and the hello message |",
        "",
        "An output named `speech` is optional: the probability, already a sigmoid in the graph and",
        "produced by the same `step()` call, that the scored window holds speech. With it the",
        "runtime judges a window to be speech iff that probability is at least 0.5",
        "(`streamqa.presence.SPEECH_THRESHOLD`), live and in `streamqa score`; without it the",
        'level-based activity gate decides, as before (docs/protocol.md, "Speech"). It is not a',
        "quality score: it is published only as a score message's `speech_p`, never in",
        "`hello.model.outputs`, a score's `outputs` or a `streamqa score` line.",
        "",
    ]
    for card_path in sorted(MODELS_DIR.glob("*.json")):
        card = json.loads(card_path.read_text())
        lines += [
            f"## {card['name']}",
            "",
            "| field | value |",
            "| --- | --- |",
            f"| file | `streamqa/models/{card['file']}` |",
            f"| sha256 | `{card['sha256']}` |",
            f"| parameters | {card['params']:,} |",
            f"| MACs per second of audio | {card['macs_per_second'] / 1e6:.2f} M |",
        ]
        if "macs_per_second_offline" in card:  # a whole-window model: every hop re-scores the window
            lines += [
                f"| MACs per second, offline (one pass per window) | {card['macs_per_second_offline'] / 1e6:.2f} M |",
                f"| streams per core (live, {card['hop_seconds']:g} s hop, one thread) | {card['streams_per_core']:g} |",
            ]
        sources = "MOS from Distill-MOS" + ("; SIG/BAK/OVRL from DNSMOS P.835" if "sig" in card["outputs"] else "")
        lines += [
            f"| outputs | {', '.join(card['outputs'])} ({sources}) |",
            f"| teacher | {card['teacher']} |",
            f"| training data | {card['training_data']} |",
            f"| evaluated on | {card['evaluated_on']} |",
        ]
        if "licence" in card:
            lines.append(f"| licence | {card['licence']}: {card['attribution']} |")
        lines += [
            "",
            "| output | PCC | SRCC |",
            "| --- | --- | --- |",
        ]
        acc = card["accuracy"]
        for out in card["outputs"]:
            if f"{out}_pcc" in acc:
                lines.append(f"| {out} | {acc[f'{out}_pcc']:.3f} | {acc[f'{out}_srcc']:.3f} |")
        lines += ["", f"Reproduce: `{card['command']}`", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, ONNX, eval JSON)")
    ap.add_argument("--cache", type=Path, default=Path("cache"), help="manifests, label cache, audio cache")
    ap.add_argument("--labels", type=Path, default=Path("train/labels"), help="where the label CSVs go")
    ap.add_argument("--speech-cache", type=Path, default=Path("cache/speech"), help="decoded/synthesised clean speech")
    ap.add_argument("--clips", type=int, default=22000, help="clips in the manifest (all splits)")
    ap.add_argument("--festival-clips", type=int, default=0,
                    help="clips of the Festival voices appended to the manifest (default: 0)")
    ap.add_argument("--converted-clips", type=int, default=0,
                    help="clips of the converted copies of the Asterisk prompt voice, appended after every "
                         "other row (default: 0)")
    ap.add_argument("--real-clips", help="clips of the real voices appended per split, e.g. train=4000,val=500,test=900")
    ap.add_argument("--no-speech-clips", help="rows without speech appended per split, e.g. train=1000,val=120,test=200")
    ap.add_argument("--mild-clips", help="clean or lightly degraded clips of the real voices appended once more, e.g. train=2500")
    ap.add_argument("--music-clips", help="rows of music alone (no speech) appended with them, e.g. train=600")
    ap.add_argument("--even-clips",
                    help="after them, degraded clips of the real voices drawn evenly over voices, e.g. train=4000")
    ap.add_argument("--hard-no-speech", metavar="SPLIT=N,...",
                    help="train also on this many rows without speech of the kinds the speech output confuses "
                         "with a voice, e.g. train=3000 (train.data.no_speech_set)")
    ap.add_argument("--real-train-rows", type=int,
                    help="label and train on only the first K real-voice train rows (default: all)")
    ap.add_argument("--none-dnsmos", type=int, default=300,
                    help="train rows without speech that DNSMOS labels (for bak); the rest are only rendered")
    ap.add_argument("--dnsmos-train", action="store_true",
                    help="run DNSMOS on the train split's base rows (default: reuse only the committed labels)")
    ap.add_argument("--base-shard", help="I/N: of the train split's base rows, label and train on every N-th from I")
    ap.add_argument("--eval-clips", type=parse_split_counts, default=parse_split_counts("val=500,test=800"),
                    help="label the first K base rows of val and test (default val=500,test=800; 0: all)")
    ap.add_argument("--students", default="xxs,xs,s,m,l", help="family members to train")
    ap.add_argument("--teachers", default="distillmos,dnsmos1", help="teachers for the pseudo-labels")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--dropout", type=float,
                    help="training dropout in the blocks and before the head (train.distill --dropout)")
    ap.add_argument("--warp", type=float, default=0.25,
                    help="vocal-tract-length perturbation while training (train.distill --warp)")
    ap.add_argument("--balance-voices", action="store_true",
                    help="draw the recorded voices evenly while training (train.distill --balance-voices)")
    ap.add_argument("--balance-cap", type=float, default=10.0,
                    help="with --balance-voices: a clip weighs at most this many times a clip of the largest voice "
                         "(train.distill --balance-cap)")
    ap.add_argument("--real-share", type=float, metavar="F",
                    help="with --balance-voices: the recorded voices' share of an epoch (train.distill --real-share)")
    ap.add_argument("--feature-targets", type=Path, metavar="NPZ",
                    help="Distill-MOS's pooled vectors of training clips as a second target (train.distill "
                         "--feature-targets; made by train.teacher_features)")
    ap.add_argument("--feature-weight", type=float, default=1.0,
                    help="with --feature-targets: their weight in the loss (train.distill --feature-weight)")
    ap.add_argument("--presence-refit", metavar="SPLIT=N,...",
                    help="after training, refit the speech-presence row with this many more no-speech renders per "
                         "split, at the trained row's operating point (train.presence_refit --keep-speech)")
    ap.add_argument("--presence-keep", type=keep_share, default=1.0, metavar="SHARE",
                    help="with --presence-refit: the share of the trained row's train speech clips the refitted "
                         "output still hears (train.presence_refit --keep-speech SHARE)")
    ap.add_argument("--presence-mlp", type=int, default=0, metavar="H",
                    help="with --presence-refit: fit a presence head of H hidden units over the pooled vector "
                         "instead of refitting the row (train.presence_refit --mlp)")
    ap.add_argument("--jobs", type=int, default=2, help="labelling processes (and training threads without --train-threads)")
    ap.add_argument("--train-threads", type=int, metavar="N",
                    help="torch threads of the training and the refit (default: --jobs); a float sum's order "
                         "follows the thread count, so the same weights need the same count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--int8", action="store_true", help="also evaluate int8 dynamic quantisation")
    ap.add_argument("--ship", help="copy this student into streamqa/models with its card")
    ap.add_argument("--skip-labels", action="store_true", help="use the label CSVs already in --labels")
    ap.add_argument("--mini", action="store_true", help="CI miniature: few clips, one tiny student, 2 epochs")
    args = ap.parse_args(argv)
    args.train_threads = args.train_threads or args.jobs
    if args.real_share is not None and not args.balance_voices:
        ap.error("--real-share sets the recorded voices' share of a --balance-voices draw; add --balance-voices")
    if args.mini:
        args.clips, args.students, args.epochs, args.eval_clips = min(args.clips, 40), "xxs", 2, {}
        args.dnsmos_train = True
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.skip_labels:
        labels = sorted(args.labels.glob("*.csv"))
    else:
        labels = make_labels(args, make_manifest(args)) + hard_no_speech(args)
    results = {}
    for name in args.students.split(","):
        if name not in FAMILY and not (args.out / f"{name}.json").exists():
            raise SystemExit(f"unknown student {name!r}; choose from {', '.join(FAMILY)}")
        ckpt = train_student(args, name, labels)
        results[name] = export_and_evaluate(args, name, ckpt, labels)
        mos = results[name]["test"].get("mos", {})
        print(f"{name}: {results[name]['params']} params, test PCC mos {mos.get('pcc', float('nan')):.3f}", file=sys.stderr)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.ship:
        command = "python -m train.pipeline " + " ".join(argv if argv is not None else sys.argv[1:])
        fit = results[args.ship]["training"]  # what the checkpoint itself records
        data = (f"{fit['training_data']}; generated degraded speech of the train split; "
                f"{fit['epochs']} epochs, frequency warp {fit['warp'] or 0}"
                + (f", dropout {fit['dropout']}" if fit.get("dropout") else ""))
        dst = ship(results[args.ship], args.teachers, data, command)
        write_models_doc()
        print(f"shipped {dst}", file=sys.stderr)
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
