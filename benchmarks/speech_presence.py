"""Does ``mos: null`` mean "no speech here", and only that?

    python -m benchmarks.speech_presence --json benchmarks/results/speech_presence.json [--model NAME]

Issue 17's acceptance 3, measured on audio no student trained, tuned or was chosen on:

(a) held-out real speech (utterances of the test-split real voices of ``train.data``, never
    a reserved recording) under pink noise 0 dB, white noise 5 dB, babble 3 dB (other
    test-split voices) and reverberation RT60 1.5 s: the share of files that get a ``mos``
    from ``streamqa score`` must be at least 98 %;
(b) files without speech (synthetic and recorded test-split noise, the test-split hold
    music, silence): the share that get a ``mos`` must be 0;
(c) the same per window, the hops of the file's one scorer (those ``streamqa monitor --file X
    --fast`` publishes; the file's ``mos`` is their mean over the windows judged speech): of the speech files' windows whose clean
    source holds speech (the presence target: at least ``MIN_SPEECH_FRACTION`` of its 40 ms
    frames active before degradation), the share with a ``mos`` (>= 98 %); of the
    non-speech files' windows, the share with one (0).

Files go through ``streamqa.api.file_messages``, ``streamqa score``'s function, from WAV
files written to a temporary folder. The rule (model speech output or level gate) is whatever the model brings, so the
same command measures the shipped model, a candidate, or a model without the output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_json
from streamqa.activity import MIN_SPEECH_FRACTION, speech_fraction
from streamqa.model import Model, load_model
from streamqa.presence import SPEECH_THRESHOLD, detector

CONDITIONS: dict[str, list[dict[str, Any]]] = {
    "pink 0 dB": [{"op": "noise", "kind": "pink", "snr_db": 0.0}],
    "white 5 dB": [{"op": "noise", "kind": "white", "snr_db": 5.0}],
    "babble 3 dB": [{"op": "noise", "kind": "babble", "snr_db": 3.0}],
    "reverb RT60 1.5 s": [{"op": "reverb", "rt60": 1.5}],
}
NON_SPEECH_KINDS = ("noise", "effect", "music", "silence")
SYNTHETIC_NOISES = ("white", "pink", "brown", "burst")
MUSIC = "music:reno_project-system"  # the hold-music piece of the test split
NON_SPEECH_SECONDS = 10.0
NON_SPEECH_LEVEL_DBFS = (-45.0, -15.0)
BABBLE_TALKERS = 4
MIN_SPEECH_RATE = 0.98  # of speech files (and speech windows) that must get a mos
RATE = 16000


def held_out_utterances(n: int, cache: Path) -> list:
    """``n`` utterances of the test-split real voices, taken in turn from each voice."""
    from train.data.manifest import DEFAULT_TEST_SPEAKERS, DEFAULT_VAL_SPEAKERS, split_of
    from train.data.speech import list_utterances

    by_voice: dict[str, list] = {}
    for u in list_utterances(cache, tts=False, real=True):
        if split_of(u.speaker, DEFAULT_VAL_SPEAKERS, DEFAULT_TEST_SPEAKERS) == "test":
            by_voice.setdefault(u.speaker, []).append(u)
    picked: list = []
    queues = [utts[:: max(1, len(utts) // n)] for utts in by_voice.values()]  # spread within a voice
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def babble_pool(talkers: list[np.ndarray]):
    """A ``train.data.degrade`` babble pool: ``BABBLE_TALKERS`` of ``talkers`` (other voices'
    clean speech) from random points, summed."""

    def pool(rng: np.random.Generator) -> np.ndarray:
        chosen = rng.choice(len(talkers), size=min(BABBLE_TALKERS, len(talkers)), replace=False)
        parts = [np.roll(talkers[i], -int(rng.integers(0, len(talkers[i])))) for i in chosen]
        n = max(map(len, parts))
        return sum(np.resize(p, n) for p in parts)

    return pool


def non_speech_signals(n: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """``n`` (kind, name, audio) without speech, the kinds in turn: synthetic noise, a
    test-split recorded effect that is not a spoken word, the test-split hold music (each at a
    random level), silence (digital zero, or a faint -75 dBFS noise floor)."""
    from train.data.degrade import apply_chain
    from train.data.noises import sources_of

    rng = np.random.default_rng(seed)
    effects = [s for s in sources_of("test") if s.startswith("sfx:")]
    effects = [effects[i] for i in rng.permutation(len(effects))]
    zeros = np.zeros(int(NON_SPEECH_SECONDS * RATE), np.float32)
    out = []
    for i in range(n):
        kind = NON_SPEECH_KINDS[i % len(NON_SPEECH_KINDS)]
        level = float(rng.uniform(*NON_SPEECH_LEVEL_DBFS))
        if kind == "noise":
            name = SYNTHETIC_NOISES[(i // len(NON_SPEECH_KINDS)) % len(SYNTHETIC_NOISES)]
            step = {"op": "noise", "kind": name, "level_dbfs": level}
        elif kind == "effect":
            name = effects[(i // len(NON_SPEECH_KINDS)) % len(effects)]
            step = {"op": "noise", "kind": "recorded", "source": name, "level_dbfs": level}
        elif kind == "music":
            name = MUSIC
            step = {"op": "noise", "kind": "recorded", "source": name, "level_dbfs": level}
        else:
            faint = (i // len(NON_SPEECH_KINDS)) % 2 == 1
            name = "noise floor -75 dBFS" if faint else "digital zero"
            step = {"op": "noise", "kind": "white", "level_dbfs": -75.0} if faint else None
        audio = zeros if step is None else apply_chain(zeros, [step], seed + i)
        out.append((kind, name, audio))
    return out


def window_truth(clean: np.ndarray, ends: list[float], window_s: float) -> list[bool]:
    """Whether the clean source of each live window (ending at stream time ``t``, at most
    ``window_s`` long) holds speech: the target the presence output was trained on."""
    truth = []
    for t in ends:
        seg = clean[max(0, round((t - window_s) * RATE)) : round(t * RATE)]
        truth.append(speech_fraction(seg, 640) >= MIN_SPEECH_FRACTION)
    return truth


def measure(model: Model, path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``streamqa score``'s line and the monitor's score messages for one file."""
    from streamqa.api import file_messages

    result, messages = file_messages(path, model=model)
    return {"file": str(path), **result.as_dict()}, [m for m in messages if m["type"] == "score"]


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def run(model_spec: str | None, n_speech: int, n_nonspeech: int, seed: int, cache: Path) -> dict[str, Any]:
    import soundfile as sf

    from train.data.degrade import apply_chain
    from train.data.speech import load_utterance

    started = time.monotonic()
    model = load_model(model_spec)
    window_s = model.info.window_seconds
    utts = held_out_utterances(n_speech, cache)
    clean = [load_utterance(u, cache) for u in utts]
    result: dict[str, Any] = {
        "model": model.info.name, "model_path": str(model.info.path), "speech_detector": detector(model.info),
        "threshold": SPEECH_THRESHOLD if model.info.presence is not None else None,
        "min_speech_fraction": MIN_SPEECH_FRACTION, "window_s": window_s, "hop_s": model.info.hop_samples / RATE,
        "voices": {}, "speech": {}, "non_speech": {}, "misses": [], "false_alarms": [],
    }
    for u, x in zip(utts, clean):
        v = result["voices"].setdefault(u.speaker, {"lang": u.lang, "files": 0, "seconds": 0.0})
        v["files"] += 1
        v["seconds"] = round(v["seconds"] + len(x) / RATE, 1)
    with tempfile.TemporaryDirectory(prefix="speech_presence_") as tmp:
        folder = Path(tmp)
        for c, (cond, chain) in enumerate(CONDITIONS.items()):
            files = with_mos = windows = windows_mos = other = other_mos = 0
            for i, (u, x) in enumerate(zip(utts, clean)):
                others = [y for v, y in zip(utts, clean) if v.speaker != u.speaker]
                audio = apply_chain(x, chain, seed + 1000 * c + i, babble_pool=babble_pool(others))
                path = folder / f"speech-{c}-{i}.wav"
                sf.write(str(path), audio, RATE, subtype="PCM_16")
                line, hops = measure(model, path)
                truth = window_truth(x, [h["t"] for h in hops], window_s)
                files += 1
                with_mos += line["mos"] is not None
                judged = [h["mos"] is not None for h in hops]
                windows += sum(truth)
                windows_mos += sum(j for j, s in zip(judged, truth) if s)
                other += sum(not s for s in truth)
                other_mos += sum(j for j, s in zip(judged, truth) if not s)
                if line["mos"] is None:
                    result["misses"].append({"condition": cond, "utterance": u.id, "speech_fraction": line["speech_fraction"]})
            result["speech"][cond] = {
                "files": files, "files_with_mos": with_mos, "file_rate": _rate(with_mos, files),
                "speech_windows": windows, "speech_windows_with_mos": windows_mos, "window_rate": _rate(windows_mos, windows),
                "silent_windows": other, "silent_windows_with_mos": other_mos,
            }
            print(f"{cond}: {with_mos}/{files} files, {windows_mos}/{windows} speech windows with a mos", file=sys.stderr)
        for i, (kind, name, audio) in enumerate(non_speech_signals(n_nonspeech, seed)):
            path = folder / f"nonspeech-{i}.wav"
            sf.write(str(path), audio, RATE, subtype="PCM_16")
            line, hops = measure(model, path)
            k = result["non_speech"].setdefault(kind, {"files": 0, "files_with_mos": 0, "windows": 0, "windows_with_mos": 0, "sources": []})
            k["files"] += 1
            k["files_with_mos"] += line["mos"] is not None
            k["windows"] += len(hops)
            k["windows_with_mos"] += sum(h["mos"] is not None for h in hops)
            k["sources"].append(name)
            if line["mos"] is not None or any(h["mos"] is not None for h in hops):
                result["false_alarms"].append({"kind": kind, "source": name, "file_mos": line["mos"],
                                               "windows_with_mos": sum(h["mos"] is not None for h in hops)})
    for k in result["non_speech"].values():
        k["file_rate"], k["window_rate"] = _rate(k["files_with_mos"], k["files"]), _rate(k["windows_with_mos"], k["windows"])
    sp, ns = result["speech"].values(), result["non_speech"].values()
    result["summary"] = {
        "speech_file_rate_min": min(c["file_rate"] for c in sp),
        "speech_window_rate_min": min(c["window_rate"] for c in sp if c["window_rate"] is not None),
        "non_speech_file_rate": _rate(sum(k["files_with_mos"] for k in ns), sum(k["files"] for k in ns)),
        "non_speech_window_rate": _rate(sum(k["windows_with_mos"] for k in ns), sum(k["windows"] for k in ns)),
    }
    s = result["summary"]
    s["pass"] = (s["speech_file_rate_min"] >= MIN_SPEECH_RATE and s["speech_window_rate_min"] >= MIN_SPEECH_RATE
                 and s["non_speech_file_rate"] == 0 and s["non_speech_window_rate"] == 0)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def print_table(result: dict[str, Any]) -> None:
    """The rates as a Markdown table (docs/results.md takes it as is)."""
    pct = lambda r: "n/a" if r is None else f"{100 * r:.1f} %"  # noqa: E731
    print(f"model {result['model']} ({result['model_path']}), speech decided by the {result['speech_detector']}"
          + (f" (p >= {result['threshold']})" if result["threshold"] is not None else ""))
    print("| audio | files | files with a mos | speech windows with a mos (live) |")
    print("|---|---:|---:|---:|")
    for cond, c in result["speech"].items():
        print(f"| speech, {cond} | {c['files']} | {pct(c['file_rate'])} | {pct(c['window_rate'])} "
              f"({c['speech_windows_with_mos']}/{c['speech_windows']}) |")
    print("| audio | files | files with a mos | windows with a mos (live) |")
    print("|---|---:|---:|---:|")
    for kind, k in result["non_speech"].items():
        print(f"| no speech, {kind} | {k['files']} | {pct(k['file_rate'])} | {pct(k['window_rate'])} "
              f"({k['windows_with_mos']}/{k['windows']}) |")
    s = result["summary"]
    print(f"speech: worst file rate {pct(s['speech_file_rate_min'])}, worst window rate {pct(s['speech_window_rate_min'])} "
          f"(need >= {100 * MIN_SPEECH_RATE:.0f} %); no speech: file rate {pct(s['non_speech_file_rate'])}, "
          f"window rate {pct(s['non_speech_window_rate'])} (need 0); {'PASS' if s['pass'] else 'FAIL'} "
          f"({result['seconds']} s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="bundled student name or .onnx path (default: the shipped smallest)")
    ap.add_argument("--speech", type=int, default=48, help="held-out utterances (each under every condition)")
    ap.add_argument("--non-speech", type=int, default=32, help="files without speech")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("cache/speech"), help="the speech cache (python -m train.data.voices)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    result = run(args.model, args.speech, args.non_speech, args.seed, args.cache)
    if args.json:
        write_json(args.json, result)
    print_table(result)


if __name__ == "__main__":
    main()
