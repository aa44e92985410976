"""Synthetic speech corpora from espeak-ng: the data asrkd ships with.

`synthesize_corpus` writes ``OUT/wavs/<utt_id>.wav`` (PCM_16 at `asrkd.contract.SAMPLE_RATE`) and
``OUT/manifest.jsonl`` for one of two tasks:

- ``digits``: 1-7 digits spoken as words ("three one four"); the text is those words.
- ``words``: 3-10 words drawn uniformly from ``asrkd/resources/words.txt`` (about 2 000 common
  English words, lowercase letters and apostrophes).

Speech comes from espeak-ng 1.52, called through ctypes in the library that the
``espeakng-loader`` wheel bundles (no system package, no download). A *voice* is an English accent
(`ACCENTS`, the espeak-ng voice files) combined with a *variant* (`VARIANT_FAMILIES`, the
``voices/!v`` files that set pitch, formants, breathiness or the Klatt synthesiser). Every
utterance draws its voice, speaking rate, pitch and leading/trailing silence at random.

Determinism. Everything about utterance ``i`` (text, voice, rate, pitch, silences and the seed of
espeak's noise generators) comes from ``np.random.default_rng([seed, stream, i])``, where
``stream`` names the task and voice set, so a train and a dev corpus with the same seed do not
repeat each other's texts. espeak-ng also keeps state *between* utterances (the pitch-flutter
phase, the gain control and others live in static variables that ``espeak_Terminate`` does not
reset): the same call gives different samples depending on what the process synthesised before.
Each worker therefore reloads the library from disk before every utterance (``dlclose`` +
``dlopen`` + loading the voice: about 3 ms, against about 5 ms of synthesis for a few digits),
which makes each wav a pure function of ``(seed, i)``: the same seed gives byte-identical files
whatever the number of workers, and a missing file can be regenerated alone.

Held-out voices. `voice_partition` splits the voices into ``train`` / ``dev`` / ``test`` so that
splits never share a voice. The unit of the split is the variant *family*: variant files that are
near copies of each other (the same formant template with one setting changed, e.g. ``iven`` ..
``iven4``) always land in the same split, with every accent. Families are split separately for
low- and high-pitched variants (base pitch below / from 120 Hz), ordered by the SHA-256 of the
family name, and taken greedily until dev and test each hold ``round(10 %)`` of the variants of
that register; the rest is train. The split is fixed: it depends on no seed.

Resuming. ``OUT/synth.json`` records the request (task, n, seed, voice set, ranges, word list and
voice table digests). A run whose request matches it reuses every wav already in ``OUT/wavs``
(files appear atomically, so an existing file is complete) and synthesises only the missing ones;
if the manifest is also there and nothing is missing it returns at once. A run with a different
request deletes the old manifest and every wav in ``OUT/wavs`` first, then regenerates them all
(a folder without ``synth.json`` but with a ``manifest.jsonl`` is refused, not overwritten). The manifest is written once,
atomically, after all wavs exist, so a reader never sees a half-written one.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from asrkd.audio import audio_duration, resample, write_wav
from asrkd.contract import SAMPLE_RATE
from asrkd.errors import AsrkdError
from asrkd.progress import progress as progress_bar

log = logging.getLogger(__name__)

TASKS = ("digits", "words")
VOICE_SETS = ("all", "train", "dev", "test")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_PER_UTTERANCE = (1, 7)
WORDS_PER_UTTERANCE = (3, 10)

# espeak-ng limits: rate in words per minute, pitch on espeak's 0-99 scale (50 = the voice's own).
RATE_LIMITS = (80, 450)
PITCH_LIMITS = (0, 99)
DEFAULT_RATE_RANGE = (130, 200)
DEFAULT_PITCH_RANGE = (25, 75)
DEFAULT_SILENCE_RANGE = (0.05, 0.3)  # seconds, drawn separately before and after the speech

ESPEAK_VERSION = "1.52.0"
INSTALL_HINT = "install it with `pip install espeakng-loader==0.2.4` (it bundles libespeak-ng 1.52)"

# The English voice files of espeak-ng 1.52 (espeak-ng-data/lang/gmw/). "en-Shaw" is left out: it
# reads the Shavian alphabet and speaks Latin text exactly like "en".
ACCENTS = (
    "gmw/en",  # British English ("en-gb" is not a valid name in 1.52)
    "gmw/en-029",  # Caribbean
    "gmw/en-GB-scotland",
    "gmw/en-GB-x-gbclan",  # Lancaster
    "gmw/en-GB-x-gbcwmd",  # West Midlands
    "gmw/en-GB-x-rp",  # Received Pronunciation
    "gmw/en-US",
    "gmw/en-US-nyc",
)

# Variant files of espeak-ng-data/voices/!v, grouped into families of near copies. Register "high"
# means a base pitch of 120 Hz or more. Left out, as effects rather than speakers: the robot and
# echo voices (robosoft1-8, RicishayMax1-3, UniRobot, anikaRobot, Demonic, Marco: echo amplitude
# 80 or more), "fast" (a timing test) and "Mr serious" (a space in its name; a copy of "john").
VARIANT_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    # family: (register, variants)
    "Alex": ("low", ("Alex",)),
    "Alicia": ("high", ("Alicia",)),
    "Andrea": ("high", ("Andrea",)),
    "Andy": ("low", ("Andy", "AnxiousAndy", "Lee")),
    "Annie": ("high", ("Annie",)),
    "anika": ("high", ("anika",)),
    "announcer": ("low", ("announcer",)),
    "boris": ("low", ("boris",)),
    "caleb": ("low", ("caleb",)),
    "croak": ("low", ("croak",)),
    "david": ("low", ("david",)),
    "Denis": ("low", ("Denis", "Storm", "victor")),
    "ed": ("low", ("ed",)),
    "edward": ("low", ("edward", "edward2")),
    "f1": ("high", ("f1",)),
    "f2": ("high", ("f2", "f5", "whisperf")),
    "f3": ("high", ("f3",)),
    "Gene": ("low", ("Gene", "Gene2")),
    "grandma": ("high", ("grandma",)),
    "grandpa": ("low", ("grandpa",)),
    "ian": ("low", ("ian",)),
    "iven": ("low", ("iven", "iven2", "iven3", "iven4")),
    "Jacky": ("low", ("Jacky",)),
    "john": ("low", ("john", "norbert", "Tweaky")),
    "kaukovalta": ("low", ("kaukovalta",)),
    "klatt": (
        "low",
        ("klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "adam", "benjamin"),
    ),
    "linda": ("high", ("linda", "belinda", "aunty", "f4")),
    "m1": ("low", ("m1",)),
    "m2": ("low", ("m2",)),
    "m3": ("low", ("m3",)),
    "m4": ("low", ("m4",)),
    "m5": ("low", ("m5",)),
    "m6": ("low", ("m6",)),
    "m7": ("low", ("m7", "m8", "Nguyen")),
    "Mario": ("low", ("Mario", "Michael", "gustave", "marcelo")),
    "max": ("low", ("max",)),
    "michel": ("low", ("michel", "miguel", "Diogo", "Henrique", "Hugo")),
    "Mike": ("low", ("Mike", "mike2")),
    "pablo": ("low", ("pablo",)),
    "paul": ("low", ("paul",)),
    "pedro": ("low", ("pedro", "antonio")),
    "Reed": ("low", ("Reed",)),
    "rob": ("low", ("rob", "robert", "quincy")),
    "sandro": ("low", ("sandro",)),
    "shelby": ("low", ("shelby",)),
    "steph": ("high", ("steph", "steph2", "steph3")),
    "travis": ("low", ("travis",)),
    "whisper": ("low", ("whisper",)),
    "zac": ("high", ("zac",)),
}
HELD_OUT_FRACTION = 0.1  # of the variants of each register, for dev and for test each


class SynthError(AsrkdError, RuntimeError):
    """espeak-ng is missing, fails to start, or produced no audio; the message says what to do."""


@dataclass(frozen=True, order=True)
class Voice:
    """An accent with a variant. `id` ("en-US+m3") is the manifest's speaker."""

    accent: str
    variant: str

    @property
    def id(self) -> str:
        """The accent's last path part + the variant ("en-US+m3"): the manifest's speaker."""
        return f"{self.accent.rsplit('/', 1)[-1]}+{self.variant}"

    @property
    def espeak_name(self) -> str:
        """The name `espeak_SetVoiceByName` takes, e.g. "gmw/en-US+m3"."""
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to synthesise one utterance; a pure function of the request and index."""

    index: int
    utt_id: str
    text: str
    voice: Voice
    rate: int  # words per minute
    pitch: int  # espeak 0-99
    lead_samples: int  # silence before the speech, at SAMPLE_RATE
    trail_samples: int  # silence after it
    noise_seed: int  # espeak's breath / Klatt noise generators


# ---------------------------------------------------------------------------------------------
# Voices and texts


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def voice_partition() -> dict[str, tuple[Voice, ...]]:
    """The fixed split of every voice into ``train`` / ``dev`` / ``test`` (see the module doc).

    Returns:
        ``{"train": ..., "dev": ..., "test": ...}``, each a sorted tuple of `Voice`; pairwise
        disjoint, and no variant family appears in two splits.
    """
    split_of_family: dict[str, str] = {}
    for register in ("low", "high"):
        families = sorted(
            (f for f, (reg, _) in VARIANT_FAMILIES.items() if reg == register), key=_sha256
        )
        size = {f: len(VARIANT_FAMILIES[f][1]) for f in families}
        target = round(HELD_OUT_FRACTION * sum(size.values()))
        for split in ("test", "dev"):
            taken = 0
            for f in families:
                if f not in split_of_family and taken + size[f] <= target:
                    split_of_family[f] = split
                    taken += size[f]
        for f in families:
            split_of_family.setdefault(f, "train")
    partition: dict[str, list[Voice]] = {"train": [], "dev": [], "test": []}
    for family, (_, variants) in VARIANT_FAMILIES.items():
        for variant in variants:
            partition[split_of_family[family]].extend(Voice(a, variant) for a in ACCENTS)
    return {split: tuple(sorted(v)) for split, v in partition.items()}


@cache
def voices(voice_set: str = "all") -> tuple[Voice, ...]:
    """The voices of one voice set ("all", "train", "dev" or "test"), sorted."""
    if voice_set not in VOICE_SETS:
        raise ValueError(f"unknown voice set {voice_set!r}; choose one of {', '.join(VOICE_SETS)}")
    partition = voice_partition()
    if voice_set == "all":
        chosen = tuple(sorted(v for split in partition.values() for v in split))
    else:
        chosen = partition[voice_set]
    if not chosen:
        raise ValueError(f"voice set {voice_set!r} has no voices; check VARIANT_FAMILIES")
    return chosen


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


@cache
def word_list() -> tuple[str, ...]:
    """The words of the ``words`` task, from ``asrkd/resources/words.txt`` (one per line)."""
    from asrkd.text import normalize_text

    resource = importlib.resources.files("asrkd").joinpath("resources/words.txt")
    words = []
    for lineno, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), 1):
        word = line.strip()
        if not _WORD.fullmatch(word) or normalize_text(word) != word:
            raise ValueError(
                f"{resource}:{lineno}: {line!r} is not a lowercase word of letters and apostrophes"
            )
        words.append(word)
    if len(set(words)) != len(words):
        raise ValueError(f"{resource}: has duplicate words")
    return tuple(words)


def _stream_id(task: str, voice_set: str) -> int:
    return int(_sha256(f"{task}/{voice_set}")[:8], 16)


def plan_utterance(
    task: str,
    seed: int,
    index: int,
    voice_set: str = "all",
    *,
    rate_range: tuple[int, int] = DEFAULT_RATE_RANGE,
    pitch_range: tuple[int, int] = DEFAULT_PITCH_RANGE,
    silence_range: tuple[float, float] = DEFAULT_SILENCE_RANGE,
) -> UtteranceSpec:
    """The text and synthesis settings of utterance ``index``; depends on nothing else."""
    rng = np.random.default_rng([seed, _stream_id(task, voice_set), index])
    if task == "digits":
        lo, hi = DIGITS_PER_UTTERANCE
        digits = rng.integers(0, 10, size=int(rng.integers(lo, hi + 1)))
        text = " ".join(DIGIT_WORDS[d] for d in digits)
    elif task == "words":
        lo, hi = WORDS_PER_UTTERANCE
        vocab = word_list()
        picks = rng.integers(0, len(vocab), size=int(rng.integers(lo, hi + 1)))
        text = " ".join(vocab[k] for k in picks)
    else:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    candidates = voices(voice_set)
    voice = candidates[int(rng.integers(len(candidates)))]
    rate = int(rng.integers(rate_range[0], rate_range[1] + 1))
    pitch = int(rng.integers(pitch_range[0], pitch_range[1] + 1))
    lead, trail = (round(rng.uniform(*silence_range) * SAMPLE_RATE) for _ in range(2))
    noise_seed = int(rng.integers(1, 2**31 - 1))
    utt_id = f"{task}-{voice_set}-s{seed}-{index:06d}"
    return UtteranceSpec(index, utt_id, text, voice, rate, pitch, lead, trail, noise_seed)


# ---------------------------------------------------------------------------------------------
# espeak-ng through ctypes

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_EE_OK = 0
# int callback(short *wav, int numsamples, espeak_EVENT *events); return 0 to go on
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def espeak_paths() -> tuple[Path, Path]:
    """(libespeak-ng, espeak-ng-data) as bundled by espeakng-loader, checked to be complete."""
    try:
        import espeakng_loader
    except ImportError:
        raise SynthError(f"espeak-ng is not available: {INSTALL_HINT}") from None
    library = Path(espeakng_loader.get_library_path())
    try:
        data = Path(espeakng_loader.get_data_path())
    except RuntimeError as e:
        raise SynthError(f"espeak-ng data is missing ({e}); reinstall: {INSTALL_HINT}") from None
    needed = [library, data / "phontab", data / "phondata", data / "en_dict"]
    needed += [data / "lang" / accent for accent in ACCENTS]
    needed += [
        data / "voices" / "!v" / v for _, variants in VARIANT_FAMILIES.values() for v in variants
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SynthError(
            f"espeak-ng installation is incomplete, missing {', '.join(missing[:3])}"
            f"{' and more' if len(missing) > 3 else ''}; {INSTALL_HINT}"
        )
    return library, data


def _libc_srand():
    """libc's srand: espeak's breath and Klatt noise call rand(), which a reload does not reset."""
    try:
        return ctypes.CDLL(None).srand
    except (OSError, TypeError, AttributeError):  # no process-wide libc handle (Windows)
        return None


def _unload_library(handle: int) -> None:
    import _ctypes

    unload = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary  # POSIX / Windows
    unload(handle)


class Espeak:
    """espeak-ng in this process, reloaded from disk before every utterance.

    The library is not thread-safe and keeps state across calls (see the module doc), so use one
    instance per process and never share the library with other code in that process: the
    reload only resets espeak's state when this instance holds the only handle.
    """

    def __init__(self) -> None:
        self._library, self._data = espeak_paths()
        self._lib: ctypes.CDLL | None = None
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # kept alive as long as the library
        self._srand = _libc_srand()
        self.sample_rate = self._load()

    def _on_audio(self, wav, num_samples: int, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def _load(self) -> int:
        """(Re)load the library and initialise it; returns its sample rate (22050)."""
        self.close()
        try:
            lib = ctypes.CDLL(str(self._library))
        except OSError as e:
            raise SynthError(f"cannot load {self._library}: {e}; {INSTALL_HINT}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self._data).encode(), 0
        )
        if sample_rate <= 0:
            _unload_library(lib._handle)
            raise SynthError(
                f"espeak-ng failed to initialise with data {self._data} (code {sample_rate}); "
                f"{INSTALL_HINT}"
            )
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return sample_rate

    def close(self) -> None:
        """Shut espeak-ng down and unload its library (idempotent)."""
        if self._lib is not None:
            self._lib.espeak_Terminate()
            _unload_library(self._lib._handle)
            self._lib = None

    def synthesize(
        self, text: str, voice: Voice, rate: int, pitch: int, noise_seed: int
    ) -> np.ndarray:
        """Speak ``text``; returns int16 samples ``[N]`` at `sample_rate`, as espeak made them."""
        self._load()
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != _EE_OK:
            raise SynthError(f"espeak-ng has no voice {voice.espeak_name!r}; {INSTALL_HINT}")
        lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
        lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        lib.espeak_ng_SetRandSeed(noise_seed)
        if self._srand is not None:
            self._srand(noise_seed)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = lib.espeak_Synth(
            data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
        )
        if status != _EE_OK or lib.espeak_Synchronize() != _EE_OK:
            raise SynthError(
                f"espeak-ng failed (code {status}) on {text!r} with {voice.espeak_name}"
            )
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def render(spec: UtteranceSpec, engine: Espeak) -> np.ndarray:
    """Synthesise ``spec`` as corpus audio: float32 ``[N]`` at SAMPLE_RATE.

    espeak's own leading and trailing digital silence is cut, so that the silences drawn in
    the spec are the only ones.
    """
    pcm = engine.synthesize(spec.text, spec.voice, spec.rate, spec.pitch, spec.noise_seed)
    voiced = np.flatnonzero(pcm)
    if voiced.size == 0:
        raise SynthError(
            f"espeak-ng produced no audio for {spec.utt_id} "
            f"({spec.voice.espeak_name}, {spec.text!r})"
        )
    speech = pcm[voiced[0] : voiced[-1] + 1].astype(np.float32) / 32768.0
    speech = resample(speech, engine.sample_rate, SAMPLE_RATE)
    return np.pad(speech, (spec.lead_samples, spec.trail_samples))


_ENGINE: Espeak | None = None  # one per worker process


def _synthesize_chunk(wav_dir: str, specs: Sequence[UtteranceSpec]) -> list[tuple[int, int]]:
    """Worker: render and write each spec; returns (index, number of samples) pairs."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    done = []
    for spec in specs:
        wav = render(spec, _ENGINE)
        write_wav(Path(wav_dir) / f"{spec.utt_id}.wav", wav, SAMPLE_RATE)
        done.append((spec.index, len(wav)))
    return done


# ---------------------------------------------------------------------------------------------
# The corpus


def _check_range(name: str, value: Sequence, limits: tuple[int, int] | None) -> tuple:
    """`limits` given: integers within them; None: non-negative numbers (seconds)."""
    kinds = (int,) if limits is not None else (int, float)
    if (
        len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, kinds) for v in value)
        or value[0] > value[1]
    ):
        kind = "integers" if limits is not None else "numbers"
        raise ValueError(f"{name} must be ({kind}) low, high with low <= high, got {value!r}")
    if limits is not None and (value[0] < limits[0] or value[1] > limits[1]):
        raise ValueError(f"{name} {tuple(value)} is outside espeak-ng's range {limits}")
    if limits is None and value[0] < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return tuple(value)


def _read_record(path: Path) -> dict | None:
    """The request recorded in ``synth.json``; None without one, {} if it is unreadable."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def synthesize_corpus(
    task: str,
    n: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    voice_set: str = "all",
    workers: int | None = None,
    *,
    rate_range: tuple[int, int] = DEFAULT_RATE_RANGE,
    pitch_range: tuple[int, int] = DEFAULT_PITCH_RANGE,
    silence_range: tuple[float, float] = DEFAULT_SILENCE_RANGE,
    progress: bool = True,
) -> Path:
    """Synthesise ``n`` utterances into ``out_dir`` and return the path of its manifest.

    Args:
        task: "digits" or "words".
        n: number of utterances, >= 1.
        out_dir: gets ``wavs/<utt_id>.wav``, ``manifest.jsonl`` and ``synth.json``.
        seed: any integer >= 0; the same request gives byte-identical output.
        voice_set: "all", or "train" / "dev" / "test" from `voice_partition`.
        workers: processes (default: every core available to this process).
        rate_range: speaking rate in words per minute, drawn uniformly (inclusive).
        pitch_range: espeak pitch 0-99, drawn uniformly (inclusive; 50 is the voice's own).
        silence_range: seconds of silence added before and after the speech, each drawn uniformly.
        progress: show a progress bar on stderr.

    Manifest lines carry ``audio_filepath`` (relative), ``text``, ``duration``, ``speaker``
    (`Voice.id`), ``utt_id`` and the settings ``voice``, ``variant``, ``rate``, ``pitch`` and
    ``seed``. See the module doc for how an existing ``out_dir`` is reused.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ValueError(f"workers must be an integer >= 1 or None, got {workers!r}")
    ranges = {
        "rate_range": _check_range("rate_range", rate_range, RATE_LIMITS),
        "pitch_range": _check_range("pitch_range", pitch_range, PITCH_LIMITS),
        "silence_range": _check_range("silence_range", silence_range, None),
    }
    candidates = voices(voice_set)
    espeak_paths()  # fail here, with the install hint, rather than in a worker

    # asrkd.data imports torch: keep it out of this module's import, which every worker pays.
    from asrkd.data import Utterance, write_manifest
    from asrkd.fileio import atomic_write_text

    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    manifest = out_dir / "manifest.jsonl"
    record_path = out_dir / "synth.json"
    request = {
        "format": 1,
        "task": task,
        "n": n,
        "seed": seed,
        "voice_set": voice_set,
        **{k: list(v) for k, v in ranges.items()},
        "espeak": ESPEAK_VERSION,
        "voices_sha256": _sha256("\n".join(v.espeak_name for v in candidates)),
        "words_sha256": _sha256("\n".join(word_list())) if task == "words" else None,
    }
    specs = [plan_utterance(task, seed, i, voice_set, **ranges) for i in range(n)]
    wav_path = {s.index: wav_dir / f"{s.utt_id}.wav" for s in specs}

    previous = _read_record(record_path)
    if previous is None and manifest.exists():
        raise FileExistsError(
            f"{manifest} exists but was not written by `asrkd synth` (no {record_path.name}); "
            "choose an empty output folder"
        )
    if previous == request:
        todo = [s for s in specs if not wav_path[s.index].is_file()]
        if not todo and manifest.is_file():
            log.info("%s is up to date", manifest)
            return manifest
    else:
        if previous is not None:
            log.info("%s: new request, regenerating every utterance", out_dir)
        # Forget the old corpus before recording the new request, so that no old wav is ever
        # taken for a new one.
        manifest.unlink(missing_ok=True)
        for old in wav_dir.glob("*.wav"):
            old.unlink()
        atomic_write_text(record_path, json.dumps(request, indent=2) + "\n")
        todo = specs
    wav_dir.mkdir(parents=True, exist_ok=True)
    for stale in wav_dir.glob(".*.wav.*.tmp"):  # left by a killed run; never a finished file
        stale.unlink(missing_ok=True)

    num_samples = _run_workers(todo, wav_dir, n, workers, progress, f"synth {task}/{voice_set}")
    utts = []
    for s in specs:
        path = wav_path[s.index]
        duration = (
            num_samples[s.index] / SAMPLE_RATE if s.index in num_samples else audio_duration(path)
        )
        extra = {
            "voice": s.voice.accent,
            "variant": s.voice.variant,
            "rate": s.rate,
            "pitch": s.pitch,
            "seed": seed,
        }
        utts.append(Utterance(str(path), s.text, duration, s.voice.id, 0.0, s.utt_id, extra))
    write_manifest(manifest, utts)
    return manifest


def _run_workers(
    todo: Sequence[UtteranceSpec],
    wav_dir: Path,
    total: int,
    workers: int | None,
    progress: bool,
    desc: str,
) -> dict[int, int]:
    """Render ``todo`` in a process pool; returns {index: number of samples written}."""
    num_samples: dict[int, int] = {}
    if not todo:
        return num_samples
    workers = workers or _default_workers()
    # Chunks amortise the inter-process round trip; 4+ chunks per worker keep the load balanced.
    chunk = max(1, min(16, len(todo) // (4 * workers)))
    chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    workers = min(workers, len(chunks))
    # spawn, not fork: the parent may hold torch / OpenMP threads, which do not survive a fork.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    bar = progress_bar(total, initial=total - len(todo), unit="utt", desc=desc, enabled=progress)
    try:
        futures = [pool.submit(_synthesize_chunk, str(wav_dir), c) for c in chunks]
        for future in as_completed(futures):
            results = future.result()  # re-raises a worker's error; `finally` cancels the rest
            num_samples.update(results)
            bar.update(len(results))
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return num_samples
