"""Clean speech sources for distillation: Debian's Asterisk prompts and local TTS voices.

The teacher (Distill-MOS) judges 7.68 s segments and scores zero-padded input lower, so every
utterance here is at least that long: short prompts of one speaker are joined with short pauses
and TTS sentences are generated long enough. Everything is decoded or synthesised once into a
cache directory (16 kHz mono 16-bit WAV plus a JSON index per source) and reused, so listing is
cheap after the first run and the audio is bit-identical on every later run.

Speakers are what the train/val/test split holds out, so the speaker id names the real voice:
the en and es prompt sets are read by the same woman (Allison, per the Debian directory names),
hence one speaker ``asterisk-allison``; the it set is one man, ``asterisk-carlo``. Every TTS
voice/variant is its own speaker (``espeak-de+f2``, ``flite-slt``, ``festival-pc_diphone``).
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile as sf
import soxr

from train.data.packages import package_dir

SAMPLE_RATE = 16000
TARGET_LEVEL_DBFS = -26.0
INDEX_VERSION = 1

ASTERISK_SPEAKERS = {"en": "asterisk-allison", "es": "asterisk-allison", "it": "asterisk-carlo"}
# The package of each prompt set, located with ``dpkg -L`` (``train.data.packages``): the
# ``sounds/en`` style names are links that only recommended packages create.
ASTERISK_PACKAGES = {lang: f"asterisk-core-sounds-{lang}-g722" for lang in ASTERISK_SPEAKERS}
# Prompts that are tones, jingles or animal noises rather than speech (same names in en/es/it).
NON_SPEECH = re.compile(
    r"^(beep|beeperr|ascending-2tone|descending-2tone|spy-jingle|tt-monkeys"
    r"|confbridge-begin-glorious-[a-z])$"
)
UTTERANCE_SECONDS = (8.0, 12.0)
PAUSE_SECONDS = (0.2, 0.5)

ESPEAK_LANGS = ("en", "en-us", "de", "nl", "sv", "pl", "pt", "es", "it")
ESPEAK_VARIANTS = ("m1", "m3", "f2", "f4")
FLITE_VOICES = ("kal", "awb", "rms", "slt", "kal16")
# Festival's Debian voices (festvox-*) and the language of the text each reads. Most are diphone
# voices: concatenated recordings of a real speaker, so nearer to real speech than formant
# synthesis, and they add the male real-speaker timbres that the Asterisk set lacks.
# Left out: cmu_us_slt_arctic_hts (the same speaker as flite-slt, a test voice), ru (kept,
# like fr, for independent evaluation), hi/mr/te (no grammar here for their scripts).
FESTIVAL_VOICES = (("kal_diphone", "en"), ("ked_diphone", "en"), ("lp_diphone", "it"),
                   ("pc_diphone", "it"), ("upc_ca_ona_hts", "ca"), ("czech_dita", "cs"),
                   ("czech_machac", "cs"), ("czech_ph", "cs"), ("czech_krb", "cs"),
                   ("suo_fi_lj_diphone", "fi"), ("hy_fi_mv_diphone", "fi"))
# Festival reads 8-bit text; its Czech voices expect ISO-8859-2, the others Latin-1.
FESTIVAL_ENCODING = {"cs": "iso-8859-2"}
TTS_UTTERANCES_PER_VOICE = 10
# Converted copies of the real training voice (Praat's "Change gender": PSOLA pitch change and
# formant scaling): (name, formant ratio, new median pitch in Hz). Allison is the only real voice
# the training split has, so nearly every high-quality training clip is hers and a student can
# tie "good" to her voice; these put her recordings at male pitches and timbres. Only the
# prompt sets named here are converted, and a converted speaker ``SOURCE@NAME`` always shares
# its source's split (``train.data.manifest.split_of``). The teacher labels every converted
# clip itself; no label is carried over from the source recording.
VOICE_CONVERSIONS = (("m95", 1.0, 95.0), ("m105", 0.95, 105.0), ("m115", 0.9, 115.0),
                     ("m125", 0.97, 125.0), ("m140", 0.92, 140.0), ("m160", 1.0, 160.0))
CONVERSION_LANGS = ("en", "es")
CONVERSION_PITCH_RANGE = (75.0, 600.0)  # Praat's pitch analysis floor and ceiling, Hz

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Utterance:
    """One speaker's clean speech, >= 7.68 s.

    ``parts`` for kind "prompt" are prompt paths relative to the language's sound directory
    (without extension), joined in order with pauses derived from ``id``; for "tts" they are
    ``(engine, voice, text)``; for "converted" ``(source id, formant ratio, pitch Hz)``; for
    "user" a single file path.
    """

    id: str
    speaker: str
    lang: str
    kind: str
    parts: tuple[str, ...]


def _seed(*keys: object) -> int:
    """A stable integer seed from strings (Python's hash() changes per process)."""
    return zlib.crc32("\x1f".join(str(k) for k in keys).encode())


def active_rms(audio: np.ndarray, *, frame: int = 320, floor_db: float = -35.0) -> float:
    """RMS over the frames that carry speech (a light stand-in for ITU-T P.56).

    Pauses would otherwise drag the level down and make loudness depend on how much silence an
    utterance holds. A frame is active when its power is within ``floor_db`` of the loud frames
    (95th percentile) and above -100 dBFS. Returns 0.0 for silence.
    """
    x = np.asarray(audio, dtype=np.float64)
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    power = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    loud = np.percentile(power, 95)
    active = power > max(1e-10, loud * 10 ** (floor_db / 10))
    if not active.any():
        return 0.0
    return float(np.sqrt(np.mean(power[active])))


def normalise_level(audio: np.ndarray, level_dbfs: float = TARGET_LEVEL_DBFS) -> np.ndarray:
    """Scale to the given active speech level, limited so the peak stays below full scale."""
    rms = active_rms(audio)
    if rms <= 0:
        return np.zeros_like(audio, dtype=np.float32)
    gain = 10 ** (level_dbfs / 20) / rms
    peak = float(np.max(np.abs(audio))) * gain
    if peak > 0.99:
        gain *= 0.99 / peak
    return (audio * gain).astype(np.float32)


def _trim(audio: np.ndarray, margin: int = 800) -> np.ndarray:
    """Cut leading/trailing silence (below -50 dB re peak) so pauses between parts are ours."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak <= 0:
        return audio[:0]
    idx = np.flatnonzero(np.abs(audio) > peak * 10 ** (-50 / 20))
    return audio[max(0, idx[0] - margin): idx[-1] + 1 + margin]


def _write_atomic_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _read_wav(path: Path) -> np.ndarray:
    audio, sr = sf.read(path, dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: cached audio at {sr} Hz, expected {SAMPLE_RATE}")
    return audio


# ---------------------------------------------------------------------------------------------
# Asterisk prompts


def asterisk_dir(lang: str) -> Path:
    """The prompt directory of a language's G.722 package, as ``dpkg -L`` lists it."""
    if lang not in ASTERISK_PACKAGES:
        raise ValueError(f"no Asterisk prompt set for {lang!r} (allowed: en, es, it)")
    return package_dir(ASTERISK_PACKAGES[lang], ".g722")


def _prompt_files(lang: str) -> list[tuple[str, Path]]:
    root = asterisk_dir(lang)
    out = []
    for p in sorted(root.rglob("*.g722")):
        rel = p.relative_to(root).with_suffix("").as_posix()
        if rel.startswith("silence/") or NON_SPEECH.match(p.stem):
            continue
        out.append((rel, p))
    return out


def decode_files(files: list[tuple[str, Path]], out_dir: Path, input_format: str | None,
                 progress: Progress | None = None, label: str = "") -> dict[str, int]:
    """Decode, trim and cache each ``(name, path)`` as ``out_dir/NAME.wav`` (16 kHz mono);
    returns {name: samples} for the files that hold speech-level audio.

    ffmpeg starts slowly (~0.1 s here), so ~100 files go through one ffmpeg call with one
    input and one output per file; each file still gets its own decoder state.
    ``input_format`` names a headerless format (``g722``, ``gsm``); None lets ffmpeg probe.
    """
    lengths: dict[str, int] = {}
    batch = 100
    fmt = ["-f", input_format] if input_format else []
    for start in range(0, len(files), batch):
        chunk = files[start: start + batch]
        args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1"]
        for _, src in chunk:
            args += [*fmt, "-i", str(src)]
        for i, (rel, _) in enumerate(chunk):
            dst = out_dir / f"{rel}.raw.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            args += ["-map", f"{i}:a", "-ar", str(SAMPLE_RATE), "-ac", "1", str(dst)]
        done = subprocess.run(args, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg could not decode {label} files: "
                               f"{done.stderr.decode(errors='replace')[-400:]}")
        for rel, _ in chunk:
            raw = out_dir / f"{rel}.raw.wav"
            audio = _trim(_read_wav(raw))
            raw.unlink()
            # Files with less than 0.15 s of speech-level audio are not worth a part.
            if len(audio) < 0.3 * SAMPLE_RATE or active_rms(audio) < 10 ** (-60 / 20):
                continue
            sf.write(out_dir / f"{rel}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
            lengths[rel] = len(audio)
        if progress:
            progress(f"{label}: decoded {min(start + batch, len(files))}/{len(files)} files")
    return lengths


def _pauses(uid: str, n: int) -> list[int]:
    rng = np.random.default_rng(_seed("pause", uid))
    return [int(rng.uniform(*PAUSE_SECONDS) * SAMPLE_RATE) for _ in range(max(0, n - 1))]


def group_parts(group_key: str, lengths: dict[str, int]) -> list[list[str]]:
    """Join shuffled parts into 8-12 s groups (a longer part stands alone); the shuffle is
    seeded by ``group_key``, so the grouping is a function of the part set."""
    rng = np.random.default_rng(_seed("group", group_key))
    names = sorted(lengths)
    order = [names[i] for i in rng.permutation(len(names))]
    lo, hi = (s * SAMPLE_RATE for s in UTTERANCE_SECONDS)
    groups: list[list[str]] = []
    cur: list[str] = []
    cur_len = 0
    target = rng.uniform(lo, hi)
    for name in order:
        n = lengths[name]
        if n > hi:
            groups.append([name])
            continue
        if cur and cur_len + n + PAUSE_SECONDS[1] * SAMPLE_RATE > hi and cur_len >= lo:
            groups.append(cur)
            cur, cur_len, target = [], 0, rng.uniform(lo, hi)
        cur.append(name)
        cur_len += n + (PAUSE_SECONDS[0] * SAMPLE_RATE if len(cur) > 1 else 0)
        if cur_len >= target:
            groups.append(cur)
            cur, cur_len, target = [], 0, rng.uniform(lo, hi)
    if cur:
        groups.append(cur)
    return groups


def joined_rows(uid_prefix: str, speaker: str, lang: str, kind: str, groups: list[list[str]],
                lengths: dict[str, int]) -> list[dict]:
    """Index rows for utterances made of ``groups`` of parts joined with seeded pauses."""
    rows = []
    for i, parts in enumerate(groups):
        uid = f"{uid_prefix}-{i:04d}"
        samples = sum(lengths[p] for p in parts) + sum(_pauses(uid, len(parts)))
        rows.append({"id": uid, "speaker": speaker, "lang": lang, "kind": kind,
                     "parts": parts, "samples": samples})
    return rows


def _asterisk_index(lang: str, cache_dir: Path, progress: Progress | None) -> list[dict]:
    path = cache_dir / "index" / f"asterisk-{lang}.json"
    files = _prompt_files(lang)
    if path.exists():
        idx = json.loads(path.read_text())
        if idx.get("version") == INDEX_VERSION and idx.get("n_files") == len(files):
            return idx["utterances"]
    lengths = decode_files(files, cache_dir / "asterisk" / lang, "g722", progress,
                           f"asterisk {lang}")
    rows = joined_rows(f"ast-{lang}", ASTERISK_SPEAKERS[lang], lang, "prompt",
                       group_parts(lang, lengths), lengths)
    _write_atomic_json(path, {"version": INDEX_VERSION, "n_files": len(files), "utterances": rows})
    return rows


# ---------------------------------------------------------------------------------------------
# TTS

# Small per-language grammars: enough variety that sentences do not repeat, in the voice's own
# language so the phonetics are right. Numbers are written as digits and read natively.
_GRAMMAR: dict[str, tuple[tuple[str, ...], ...]] = {
    "en": (("the driver", "my neighbour", "a young teacher", "the old farmer", "our manager",
            "the quiet student", "her brother", "the nurse"),
           ("found", "carried", "painted", "sold", "repaired", "ordered", "forgot", "opened"),
           ("a green bicycle", "the wooden door", "twelve letters", "a cup of tea",
            "the heavy box", "an old map", "the kitchen window", "a bag of apples"),
           ("before lunch", "near the station", "last winter", "after the meeting",
            "in the garden", "on a rainy morning", "at the harbour", "during the storm")),
    "de": (("der Fahrer", "meine Nachbarin", "ein junger Lehrer", "der alte Bauer",
            "unsere Chefin", "der Student", "ihr Bruder", "die Ärztin"),
           ("fand", "trug", "malte", "verkaufte", "reparierte", "bestellte", "vergaß", "öffnete"),
           ("ein grünes Fahrrad", "die alte Tür", "zwölf Briefe", "eine Tasse Tee",
            "die schwere Kiste", "eine alte Karte", "das Küchenfenster", "einen Korb Äpfel"),
           ("vor dem Mittagessen", "am Bahnhof", "im letzten Winter", "nach der Sitzung",
            "im Garten", "an einem Regentag", "am Hafen", "während des Sturms")),
    "nl": (("de chauffeur", "mijn buurvrouw", "een jonge leraar", "de oude boer",
            "onze manager", "de student", "haar broer", "de verpleegster"),
           ("vond", "droeg", "schilderde", "verkocht", "repareerde", "bestelde", "vergat",
            "opende"),
           ("een groene fiets", "de houten deur", "twaalf brieven", "een kopje thee",
            "de zware doos", "een oude kaart", "het keukenraam", "een zak appels"),
           ("voor de lunch", "bij het station", "vorige winter", "na de vergadering",
            "in de tuin", "op een regenachtige ochtend", "in de haven", "tijdens de storm")),
    "sv": (("chauffören", "min granne", "en ung lärare", "den gamle bonden", "vår chef",
            "studenten", "hennes bror", "sjuksköterskan"),
           ("hittade", "bar", "målade", "sålde", "lagade", "beställde", "glömde", "öppnade"),
           ("en grön cykel", "trädörren", "tolv brev", "en kopp te", "den tunga lådan",
            "en gammal karta", "köksfönstret", "en påse äpplen"),
           ("före lunch", "vid stationen", "förra vintern", "efter mötet", "i trädgården",
            "en regnig morgon", "i hamnen", "under stormen")),
    "pl": (("kierowca", "moja sąsiadka", "młody nauczyciel", "stary rolnik", "nasz kierownik",
            "student", "jej brat", "pielęgniarka"),
           ("znalazł", "niósł", "pomalował", "sprzedał", "naprawił", "zamówił", "zapomniał",
            "otworzył"),
           ("zielony rower", "drewniane drzwi", "dwanaście listów", "filiżankę herbaty",
            "ciężkie pudło", "starą mapę", "okno w kuchni", "worek jabłek"),
           ("przed obiadem", "przy dworcu", "zeszłej zimy", "po spotkaniu", "w ogrodzie",
            "w deszczowy poranek", "w porcie", "podczas burzy")),
    "pt": (("o motorista", "a minha vizinha", "um jovem professor", "o velho agricultor",
            "o nosso gerente", "o estudante", "o irmão dela", "a enfermeira"),
           ("encontrou", "levou", "pintou", "vendeu", "consertou", "encomendou", "esqueceu",
            "abriu"),
           ("uma bicicleta verde", "a porta de madeira", "doze cartas", "uma chávena de chá",
            "a caixa pesada", "um mapa antigo", "a janela da cozinha", "um saco de maçãs"),
           ("antes do almoço", "perto da estação", "no inverno passado", "depois da reunião",
            "no jardim", "numa manhã de chuva", "no porto", "durante a tempestade")),
    "es": (("el conductor", "mi vecina", "un joven profesor", "el viejo granjero",
            "nuestra directora", "el estudiante", "su hermano", "la enfermera"),
           ("encontró", "llevó", "pintó", "vendió", "arregló", "pidió", "olvidó", "abrió"),
           ("una bicicleta verde", "la puerta de madera", "doce cartas", "una taza de té",
            "la caja pesada", "un mapa antiguo", "la ventana de la cocina",
            "una bolsa de manzanas"),
           ("antes del almuerzo", "cerca de la estación", "el invierno pasado",
            "después de la reunión", "en el jardín", "una mañana de lluvia", "en el puerto",
            "durante la tormenta")),
    "it": (("l'autista", "la mia vicina", "un giovane insegnante", "il vecchio contadino",
            "il nostro direttore", "lo studente", "suo fratello", "l'infermiera"),
           ("trovò", "portò", "dipinse", "vendette", "riparò", "ordinò", "dimenticò", "aprì"),
           ("una bicicletta verde", "la porta di legno", "dodici lettere", "una tazza di tè",
            "la scatola pesante", "una vecchia mappa", "la finestra della cucina",
            "un sacchetto di mele"),
           ("prima di pranzo", "vicino alla stazione", "l'inverno scorso", "dopo la riunione",
            "in giardino", "in una mattina di pioggia", "al porto", "durante il temporale")),
    "ca": (("el conductor", "la meva veïna", "un jove professor", "el vell pagès",
            "la nostra directora", "l'estudiant", "el seu germà", "la infermera"),
           ("va trobar", "va portar", "va pintar", "va vendre", "va arreglar", "va demanar",
            "va oblidar", "va obrir"),
           ("una bicicleta verda", "la porta de fusta", "dotze cartes", "una tassa de te",
            "la caixa pesada", "un mapa antic", "la finestra de la cuina", "una bossa de pomes"),
           ("abans de dinar", "a prop de l'estació", "l'hivern passat", "després de la reunió",
            "al jardí", "un matí de pluja", "al port", "durant la tempesta")),
    "cs": (("řidič", "moje sousedka", "mladý učitel", "starý farmář", "náš ředitel", "student",
            "její bratr", "zdravotní sestra"),
           ("našel", "nesl", "namaloval", "prodal", "opravil", "objednal", "zapomněl",
            "otevřel"),
           ("zelené kolo", "dřevěné dveře", "dvanáct dopisů", "šálek čaje", "těžkou krabici",
            "starou mapu", "kuchyňské okno", "pytel jablek"),
           ("před obědem", "u nádraží", "minulou zimu", "po schůzce", "na zahradě",
            "jednoho deštivého rána", "v přístavu", "během bouřky")),
    "fi": (("kuljettaja", "naapurini", "nuori opettaja", "vanha maanviljelijä", "johtajamme",
            "opiskelija", "hänen veljensä", "sairaanhoitaja"),
           ("löysi", "kantoi", "maalasi", "myi", "korjasi", "tilasi", "unohti", "avasi"),
           ("vihreän polkupyörän", "puisen oven", "kaksitoista kirjettä", "kupin teetä",
            "painavan laatikon", "vanhan kartan", "keittiön ikkunan", "pussin omenoita"),
           ("ennen lounasta", "aseman lähellä", "viime talvena", "kokouksen jälkeen",
            "puutarhassa", "eräänä sateisena aamuna", "satamassa", "myrskyn aikana")),
}


def make_text(lang: str, rng: np.random.Generator, min_words: int = 26) -> str:
    """Sentences from the language's grammar (subject verb object place), some with numbers."""
    subj, verb, obj, place = _GRAMMAR[lang.split("-")[0]]
    sentences: list[str] = []
    words = 0
    while words < min_words:
        pick = [g[rng.integers(len(g))] for g in (subj, verb, obj, place)]
        if rng.random() < 0.3:
            pick.append(f"{rng.integers(2, 99)}, {rng.integers(100, 9999)}")
        s = " ".join(pick)
        sentences.append(s[0].upper() + s[1:] + ".")
        words += len(s.split())
    return " ".join(sentences)


def _tts_voices() -> list[tuple[str, str, str]]:
    """(engine, voice, lang) for every espeak-ng and flite speaker."""
    voices = [("espeak-ng", f"{lang}+{var}", lang) for lang in ESPEAK_LANGS
              for var in ESPEAK_VARIANTS]
    voices += [("flite", v, "en") for v in FLITE_VOICES]
    return voices


def _festival_voices() -> list[tuple[str, str, str]]:
    """(engine, voice, lang) for every Festival speaker."""
    return [("festival", v, lang) for v, lang in FESTIVAL_VOICES]


def _synthesise(engine: str, voice: str, text: str, rng: np.random.Generator) -> np.ndarray:
    """Render text with a random-but-seeded speaking rate (and pitch for espeak), 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        if engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice, "-s", str(int(rng.integers(135, 185))),
                   "-p", str(int(rng.integers(30, 70))), "-w", str(wav), text]
        elif engine == "flite":
            cmd = ["flite", "-voice", voice, "--setf",
                   f"duration_stretch={rng.uniform(0.9, 1.15):.3f}", "-t", text, "-o", str(wav)]
        elif engine == "festival":
            lang = dict(FESTIVAL_VOICES).get(voice, "")
            txt = Path(tmp) / "in.txt"
            txt.write_bytes(text.encode(FESTIVAL_ENCODING.get(lang, "latin-1")))
            cmd = ["text2wave", "-eval", f"(voice_{voice})", "-eval",
                   f"(Parameter.set 'Duration_Stretch {rng.uniform(0.9, 1.15):.3f})",
                   "-o", str(wav), str(txt)]
        else:
            raise ValueError(f"unknown TTS engine {engine!r}")
        subprocess.run(cmd, check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    return _trim(audio)


def _cached_index(path: Path, key: dict) -> list[dict] | None:
    """The utterance rows of index ``path`` if it was built with this ``key``, else None."""
    if not path.exists():
        return None
    idx = json.loads(path.read_text())
    if idx.get("version") == INDEX_VERSION and idx.get("key") == key:
        return idx["utterances"]
    return None


def _tts_index(cache_dir: Path, name: str, voices: list[tuple[str, str, str]],
               min_seconds: float, progress: Progress | None) -> list[dict]:
    """Synthesise (once) and index ``voices`` as ``index/NAME.json``.

    Each engine has its own index so that adding one never changes another's key, and with it
    the utterances, manifests and teacher labels built on it.
    """
    path = cache_dir / "index" / f"{name}.json"
    key = {"voices": [list(v) for v in voices], "per_voice": TTS_UTTERANCES_PER_VOICE}
    cached = _cached_index(path, key)
    if cached is not None:
        return cached
    rows = []
    for vi, (engine, voice, lang) in enumerate(voices):
        speaker = f"{'espeak' if engine == 'espeak-ng' else engine}-{voice}"
        for k in range(TTS_UTTERANCES_PER_VOICE):
            uid = f"tts-{speaker}-{k:02d}"
            rng = np.random.default_rng(_seed("tts", uid))
            text = make_text(lang, rng)
            audio = _synthesise(engine, voice, text, rng)
            # A slow voice can still fall short of a teacher segment: lengthen and retry.
            for _ in range(3):
                if len(audio) >= (min_seconds + 0.3) * SAMPLE_RATE:
                    break
                text += " " + make_text(lang, rng, min_words=10)
                audio = _synthesise(engine, voice, text, rng)
            dst = cache_dir / "tts" / speaker / f"{k:02d}.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dst, audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append({"id": uid, "speaker": speaker, "lang": lang, "kind": "tts",
                         "parts": [engine, voice, text], "samples": len(audio)})
        if progress:
            progress(f"{name}: synthesised {vi + 1}/{len(voices)} voices")
    _write_atomic_json(path, {"version": INDEX_VERSION, "key": key, "utterances": rows})
    return rows


def convert_voice(audio: np.ndarray, formant_ratio: float, pitch_hz: float,
                  seed: int) -> np.ndarray:
    """``audio`` (16 kHz) with its median pitch moved to ``pitch_hz`` and its formants scaled
    by ``formant_ratio``, duration kept (Praat's "Change gender", pitch range unchanged).

    Praat's overlap-add draws random numbers, so two unseeded calls differ; its generator is
    seeded with ``seed`` for the call (and made unpredictable again after), which makes the
    result a function of its arguments like every other source here.
    """
    import parselmouth
    from parselmouth.praat import call, run

    sound = parselmouth.Sound(np.asarray(audio, np.float64), SAMPLE_RATE)
    run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
    try:
        out = call(sound, "Change gender", *CONVERSION_PITCH_RANGE, formant_ratio, pitch_hz,
                   1.0, 1.0)
    finally:
        run("random_initializeSafelyAndUnpredictably ()")
    return np.clip(out.values[0], -1.0, 1.0).astype(np.float32)


def _converted_index(cache_dir: Path, sources: list[dict],
                     progress: Progress | None) -> list[dict]:
    """Convert (once) every source utterance with every ``VOICE_CONVERSIONS`` entry and index
    the copies as ``index/converted.json``; the key names the sources, so a changed Asterisk
    index rebuilds it."""
    path = cache_dir / "index" / "converted.json"
    key = {"conversions": [list(c) for c in VOICE_CONVERSIONS],
           "sources": [r["id"] for r in sources]}
    cached = _cached_index(path, key)
    if cached is not None:
        return cached
    by_voice: dict[str, list[dict]] = {name: [] for name, _, _ in VOICE_CONVERSIONS}
    for si, src in enumerate(sources):
        clean = load_utterance(_to_utterance(src, cache_dir), cache_dir)
        for name, formant_ratio, pitch_hz in VOICE_CONVERSIONS:
            audio = convert_voice(clean, formant_ratio, pitch_hz,
                                  _seed("converted", name, src["id"]))
            dst = cache_dir / "converted" / name / f"{src['id']}.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dst, audio, SAMPLE_RATE, subtype="PCM_16")
            by_voice[name].append({"id": f"vc-{name}-{src['id']}",
                                   "speaker": f"{src['speaker']}@{name}", "lang": src["lang"],
                                   "kind": "converted",
                                   "parts": [src["id"], str(formant_ratio), str(pitch_hz)],
                                   "samples": len(audio)})
        if progress:
            progress(f"converted: {si + 1}/{len(sources)} utterances")
    rows = [row for voice in by_voice.values() for row in voice]  # grouped by voice, as listed
    _write_atomic_json(path, {"version": INDEX_VERSION, "key": key, "utterances": rows})
    return rows


# ---------------------------------------------------------------------------------------------
# Public API

_SAMPLES: dict[tuple[str, str], int] = {}


def _to_utterance(row: dict, cache_dir: Path) -> Utterance:
    u = Utterance(row["id"], row["speaker"], row["lang"], row["kind"], tuple(row["parts"]))
    _SAMPLES[(str(cache_dir), u.id)] = int(row["samples"])
    return u


def list_utterances(cache_dir: Path = Path("cache/speech"), *, langs=("en", "es", "it"),
                    tts: bool = True, festival: bool = False, converted: bool = False,
                    real: bool = False, min_seconds: float = 7.68,
                    progress: Progress | None = None) -> list[Utterance]:
    """All clean utterances >= ``min_seconds``, decoding/synthesising into the cache once.

    Order is deterministic: Asterisk languages in the given order, then espeak-ng and flite
    voices (``tts``), then Festival voices (``festival``), then the converted copies of the
    ``CONVERSION_LANGS`` prompt sets (``converted``), then the real voices of
    ``train.data.voices`` (``real``). The last three are off by default: they came later, and
    the default listing fixes the clip manifests that existing labels belong to.
    ``progress`` receives one line per batch on the first (slow) run.
    """
    cache_dir = Path(cache_dir)
    rows: list[dict] = []
    for lang in langs:
        if lang not in ASTERISK_SPEAKERS:
            raise ValueError(f"no Asterisk prompt set for {lang!r} (allowed: en, es, it)")
        rows += _asterisk_index(lang, cache_dir, progress)
    if tts:
        rows += _tts_index(cache_dir, "tts", _tts_voices(), min_seconds, progress)
    if festival:
        rows += _tts_index(cache_dir, "festival", _festival_voices(), min_seconds, progress)
    if converted:
        sources = [r for lang in CONVERSION_LANGS
                   for r in _asterisk_index(lang, cache_dir, progress)
                   if r["samples"] >= min_seconds * SAMPLE_RATE]
        rows += _converted_index(cache_dir, sources, progress)
    if real:
        from train.data.voices import real_voice_rows

        rows += real_voice_rows(cache_dir, progress)
    return [_to_utterance(r, cache_dir) for r in rows
            if r["samples"] >= min_seconds * SAMPLE_RATE]


def utterance_samples(u: Utterance, cache_dir: Path = Path("cache/speech")) -> int:
    """Length in 16 kHz samples without loading the audio (from the index, or file header)."""
    cache_dir = Path(cache_dir)
    if u.kind == "user":
        info = sf.info(u.parts[0])
        return int(round(info.frames * SAMPLE_RATE / info.samplerate))
    key = (str(cache_dir), u.id)
    if key not in _SAMPLES:
        find_utterance(u.id, cache_dir)
    return _SAMPLES[key]


def find_utterance(uid: str, cache_dir: Path = Path("cache/speech")) -> Utterance:
    """Resolve an id written in a manifest back to its Utterance via the cached indexes.

    Ids ``user:PATH`` stand for a user's file (speaker unknown: the path).
    """
    cache_dir = Path(cache_dir)
    if uid.startswith("user:"):
        return Utterance(uid, uid[5:], "", "user", (uid[5:],))
    index_files = sorted((cache_dir / "index").glob("*.json"))
    found = _by_id(str(cache_dir), tuple((str(p), p.stat().st_mtime_ns) for p in index_files))
    if uid not in found:
        raise KeyError(f"utterance {uid!r} not in {cache_dir}/index (run list_utterances first)")
    return found[uid]


@functools.lru_cache(maxsize=4)
def _by_id(cache_dir: str, index_files: tuple[tuple[str, int], ...]) -> dict[str, Utterance]:
    """All indexed utterances by id; keyed on the index files' mtimes so rebuilds are seen."""
    out = {}
    for path, _ in index_files:
        for row in json.loads(Path(path).read_text())["utterances"]:
            out[row["id"]] = _to_utterance(row, Path(cache_dir))
    return out


def _join(uid: str, parts: list[np.ndarray]) -> np.ndarray:
    """The parts of utterance ``uid`` with its seeded pauses between them."""
    pauses = _pauses(uid, len(parts))
    chunks: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i:
            chunks.append(np.zeros(pauses[i - 1], np.float32))
        chunks.append(part)
    return np.concatenate(chunks)


def load_utterance(u: Utterance, cache_dir: Path = Path("cache/speech")) -> np.ndarray:
    """float32 16 kHz mono at an active speech level of about -26 dBFS."""
    cache_dir = Path(cache_dir)
    if u.kind in ("prompt", "joined"):
        folder = cache_dir / "asterisk" / u.lang if u.kind == "prompt" else \
            cache_dir / "voices" / u.speaker
        audio = _join(u.id, [_read_wav(folder / f"{part}.wav") for part in u.parts])
    elif u.kind == "tts":
        audio = _read_wav(cache_dir / "tts" / u.speaker / f"{u.id.rsplit('-', 1)[1]}.wav")
    elif u.kind == "converted":
        audio = _read_wav(cache_dir / "converted" / u.speaker.split("@")[1] / f"{u.parts[0]}.wav")
    elif u.kind == "user":
        from train.data.corpus import load_audio_16k
        audio = load_audio_16k(Path(u.parts[0]))
    else:
        raise ValueError(f"unknown utterance kind {u.kind!r}")
    return normalise_level(audio)
