"""Plan and write the synthetic read-speech corpus in the LibriSpeech layout.

``synth_corpus(out_dir, ...)`` writes::

    out_dir/SPEAKERS.TXT                              ID|SEX|SUBSET|MINUTES|NAME (';' header)
    out_dir/{train,dev,test}/<spk>/<chap>/<spk>-<chap>-<utt>.flac   16 kHz mono PCM_16
    out_dir/{train,dev,test}/<spk>/<chap>/<spk>-<chap>.trans.txt    "<utt-id> UPPER WORDS"
    out_dir/unlabeled/...                             only with unlabeled_hours > 0 (see below)
    out_dir/train-text.txt                            LM training text (see below)
    out_dir/summary.json                              arguments, counts and hours per subset
    out_dir/log/{babble,synth}.N.log                  job logs (only when nj > 1)

Existing ``train``/``dev``/``test`` dirs under ``out_dir`` are replaced.

A speaker is a distinct combination of espeak-ng accent, voice variant, pitch, pitch range and
speaking rate. Variants are dealt round-robin from a shuffled list, so as long as there are fewer
speakers than variants (~75) dev and test speakers use voice variants no training speaker uses.

Text comes from the King James Bible (`asrkd.synth.text`): train reads the training books, dev
and test read disjoint held-out books. ``train-text.txt`` holds every usable sentence of the
training books (about 31k, one upper-case normalised sentence a line, in Bible order), far more
than the audio speaks, because the n-gram LM needs more text than the transcripts give; it never
contains dev or test text.

``unlabeled_hours > 0`` adds an ``unlabeled`` subset: more training-book speech from speakers of
its own, the transfer set that distillation can use without its transcripts (Hinton et al. 2015,
sec. 2: "the transfer set ... could consist entirely of unlabeled data"). Its speakers never use a
dev or test speaker's voice variant, so a student distilled on it has heard no test voice. Its
``trans.txt`` files are written only to keep the LibriSpeech layout; the recipes never read them.

Everything random is planned up front in this process from ``seed``: speakers from
``(seed, 1)``, sentence order from ``(seed, 2, subset)``, and each utterance's espeak seed, level
and ``other``-condition room from ``(seed, 3, subset, index)``, so the files do not depend on
``nj`` and the same arguments give byte-identical files. Durations are planned from a
characters-per-minute estimate of espeak's speed, so hours are approximate (the summary has the
real ones).

Unlike LibriSpeech there is one subset per split (``train``, ``dev``, ``test``), not
clean/other variants side by side: the condition applies to the whole corpus.
"""

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asrkd.errors import UserError
from asrkd.jobs import run_jobs, split_evenly
from asrkd.synth import espeak, room, text
from asrkd.synth.resample import resample

SAMPLE_RATE = 16000
SUBSETS = ("train", "dev", "test")
UNLABELED = "unlabeled"  # optional fourth subset (planned after the others: they do not change)
CONDITIONS = ("clean", "other")
ACCENTS = (
    "en-us", "en-US-nyc", "en", "en-GB-x-rp", "en-GB-scotland", "en-GB-x-gbclan",
    "en-GB-x-gbcwmd", "en-029",
)
# robotic, whispered or otherwise not human-sounding variants (and one with a space in its name)
EXCLUDED_VARIANTS = {
    "whisper", "whisperf", "Demonic", "croak", "Tweaky", "UniRobot", "anikaRobot", "Mr serious",
}
_EXCLUDED_PREFIXES = ("robosoft",)
# espeak speaking time ~ SEC_PER_CHAR_WPM * characters / rate (fit on 60 sentences, +-0.25 s)
_SEC_PER_CHAR_WPM = 9.08
_SEC_OFFSET = 0.09


@dataclass
class SynthConfig:
    hours: float = 1.0  # training audio; dev and test are fractions of it
    condition: str = "clean"
    seed: int = 0
    num_speakers: int = None  # training speakers; default max(4, 40 per hour)
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    # test speakers (None: as many as dev); each speaks test_fraction * hours / (dev speakers),
    # so a larger test set adds speakers, not audio per speaker (the first ones are unchanged)
    test_speakers: int = None
    # dev speakers (None: max(2, 20% of training speakers)), each with a default dev speaker's
    # audio. The speakers past the default are drawn after every other subset, so the training,
    # test and unlabeled speakers and utterances are those of the default corpus; their voice
    # variants are the test speakers' (every variant is taken by then), never the training ones.
    dev_speakers: int = None
    min_words: int = 5
    max_words: int = 20
    chapter_utts: int = 40  # utterances per chapter before a speaker starts a new one
    pitch: tuple = (25, 75)  # espeak 0..100 scale
    pitch_range: tuple = (20, 90)
    rate: tuple = (120, 180)  # espeak words per minute (its speech is faster than nominal)
    level: tuple = (0.3, 0.8)  # peak amplitude of the written audio
    unlabeled_hours: float = 0.0  # transfer-set audio from further speakers (0: no such subset)
    # the ``other`` condition's room, drawn per utterance (room.RoomConfig's defaults)
    snr: tuple = (room.RoomConfig.snr_min, room.RoomConfig.snr_max)  # dB against the speech
    rt60: tuple = (room.RoomConfig.rt60_min, room.RoomConfig.rt60_max)  # seconds
    accents: tuple = ACCENTS  # espeak-ng accents a speaker is drawn from


@dataclass
class Speaker:
    id: int
    subset: str
    accent: str
    variant: str
    sex: str
    pitch: int
    pitch_range: int
    rate: int

    @property
    def voice(self):
        return f"{self.accent}+{self.variant}"

    @property
    def name(self):
        return f"{self.voice} p{self.pitch} r{self.pitch_range} w{self.rate}"


def usable_variants():
    return [
        v for v in espeak.voice_variants()
        if v not in EXCLUDED_VARIANTS and not v.startswith(_EXCLUDED_PREFIXES)
    ]


def _check(cfg, nj):
    if cfg.condition not in CONDITIONS:
        raise UserError(f"unknown condition {cfg.condition!r}; use one of {', '.join(CONDITIONS)}")
    if not (cfg.hours > 0 and math.isfinite(cfg.hours)):
        raise UserError(f"--hours must be a positive number, got {cfg.hours}")
    if cfg.num_speakers is not None and cfg.num_speakers < 1:
        raise UserError(f"--num-speakers must be >= 1, got {cfg.num_speakers}")
    if cfg.test_speakers is not None and cfg.test_speakers < 1:
        raise UserError(f"--test-speakers must be >= 1, got {cfg.test_speakers}")
    if cfg.dev_speakers is not None and cfg.dev_speakers < 1:
        raise UserError(f"--dev-speakers must be >= 1, got {cfg.dev_speakers}")
    if not (cfg.unlabeled_hours >= 0 and math.isfinite(cfg.unlabeled_hours)):
        raise UserError(f"--unlabeled-hours must be >= 0, got {cfg.unlabeled_hours}")
    if not (0 < cfg.dev_fraction and 0 < cfg.test_fraction):
        raise UserError("dev and test fractions must be positive")
    if nj < 1:
        raise UserError(f"--nj must be >= 1, got {nj}")
    if not (len(cfg.snr) == 2 and cfg.snr[0] <= cfg.snr[1]
            and all(math.isfinite(x) for x in cfg.snr)):
        raise UserError(f"--snr needs MIN,MAX dB with MIN <= MAX, got {cfg.snr}")
    if not (len(cfg.rt60) == 2 and 0 < cfg.rt60[0] <= cfg.rt60[1] <= 5):
        raise UserError(f"--rt60 needs MIN,MAX seconds with 0 < MIN <= MAX <= 5, got {cfg.rt60}")
    unknown = [a for a in cfg.accents if a not in ACCENTS]
    if not cfg.accents or unknown:
        raise UserError(f"--accents: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}"
                        f"; choose from {', '.join(ACCENTS)}")
    if not 1 <= cfg.min_words <= cfg.max_words:
        raise UserError("need 1 <= min_words <= max_words")


def subsets(cfg):
    """The subsets the corpus has: train, dev, test and, with unlabeled_hours, unlabeled."""
    return SUBSETS + ((UNLABELED,) if cfg.unlabeled_hours > 0 else ())


def plan_speakers(cfg, variants):
    """Training, dev, test (and unlabeled) speakers, disjoint, with distinct voice settings.

    Unlabeled speakers take their voice variants round-robin from those no dev or test speaker
    has (variants no one has first). Dev speakers beyond the default number come last, with the
    test speakers' variants round-robin (other accent, pitch or rate).
    """
    n_train = cfg.num_speakers or max(4, round(40 * cfg.hours))
    n_held = default_held(cfg)
    counts = {"train": n_train, "dev": min(n_held, cfg.dev_speakers or n_held),
              "test": cfg.test_speakers or n_held,
              UNLABELED: max(1, round(n_train * cfg.unlabeled_hours / cfg.hours))}
    rng = np.random.default_rng([cfg.seed, 1])
    order = [variants[i] for i in rng.permutation(len(variants))]
    seen, speakers, k = set(), [], 0
    extra_dev = max(0, (cfg.dev_speakers or n_held) - n_held)
    passes = list(subsets(cfg)) + (["dev+"] if extra_dev else [])
    counts["dev+"] = extra_dev
    for subset in passes:
        if subset == "dev+":
            pool = [s.variant for s in speakers if s.subset == "test"]
        if subset == UNLABELED:
            held = {s.variant for s in speakers if s.subset in ("dev", "test")}
            # unused variants first, then the training speakers'
            pool = [v for v in order[k % len(order):] + order[:k % len(order)] if v not in held]
            if not pool:
                raise UserError("every voice variant is taken by a dev or test speaker: "
                                "too many speakers for an unlabeled subset")
        for j in range(counts[subset]):
            while True:
                variant = (pool[j % len(pool)] if subset in (UNLABELED, "dev+")
                           else order[k % len(order)])
                accent = cfg.accents[int(rng.integers(len(cfg.accents)))]
                pitch = int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1))
                prange = int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1))
                rate = int(rng.integers(cfg.rate[0], cfg.rate[1] + 1))
                key = (accent, variant, pitch, prange, rate)
                if key not in seen:
                    break
            seen.add(key)
            sex = "F" if espeak.variant_gender(variant) == "female" else "M"
            # same digit count for every id keeps string order equal to numeric order
            speakers.append(Speaker(1000 + k, "dev" if subset == "dev+" else subset, accent,
                                    variant, sex, pitch, prange, rate))
            k += 1
    if len(speakers) > 8999:
        raise UserError("at most 8999 speakers")
    return speakers


def default_held(cfg):
    """The default number of dev (and test) speakers: max(2, 20% of the training speakers)."""
    return max(2, round(0.2 * (cfg.num_speakers or max(4, round(40 * cfg.hours)))))


def _estimate_seconds(spoken, rate):
    return _SEC_OFFSET + _SEC_PER_CHAR_WPM * len(spoken) / rate


def plan_utterances(cfg, speakers, sentences):
    """One dict per utterance, everything a worker needs to write it; sorted by utterance id.

    Every speaker of a subset speaks as much as a default dev speaker (training and unlabeled:
    their share of their subset's hours). Dev speakers past the default number are planned last
    (their sentences follow the default dev speakers' in the dev books), so that the other
    subsets' utterances do not depend on them.
    """
    n_held = default_held(cfg)
    dev = [s for s in speakers if s.subset == "dev"]
    n_test = sum(s.subset == "test" for s in speakers)
    fractions = {"train": 1.0, "dev": cfg.dev_fraction,
                 "test": cfg.test_fraction * n_test / n_held,
                 UNLABELED: cfg.unlabeled_hours / cfg.hours}
    items, chap = [], 10000
    passes = [(si, subset) for si, subset in enumerate(subsets(cfg))]
    if len(dev) > n_held:
        passes.append((1, "dev+"))
    dev_next = 0  # where the extra dev speakers' sentences start in the dev books
    for si, subset in passes:
        books = {UNLABELED: "train", "dev+": "dev"}.get(subset, subset)  # unlabeled: train text
        pool = [s for s in sentences[books] if cfg.min_words <= len(s[1]) <= cfg.max_words]
        if not pool:
            raise UserError(f"no sentences of {cfg.min_words}-{cfg.max_words} words for {subset}")
        pool = [pool[i] for i in np.random.default_rng([cfg.seed, 2, si]).permutation(len(pool))]
        if subset == "dev":
            spks = dev[:n_held]
        elif subset == "dev+":
            spks = dev[n_held:]
        else:
            spks = [s for s in speakers if s.subset == subset]
        if subset in ("dev", "dev+"):  # a default dev speaker's amount each
            per_spk = cfg.hours * 3600 * fractions["dev"] / n_held
        else:
            per_spk = cfg.hours * 3600 * fractions[subset] / len(spks)
        p, index = (dev_next, 10 ** 6) if subset == "dev+" else (0, 0)
        out = "dev" if subset == "dev+" else subset
        for spk in spks:
            total, n = 0.0, 0
            while n == 0 or total < per_spk:
                if n % cfg.chapter_utts == 0:
                    chap += 1
                spoken, words = pool[p % len(pool)]  # reuse sentences only if the pool runs out
                p += 1
                rng = np.random.default_rng([cfg.seed, 3, si, index])
                utt = f"{spk.id}-{chap}-{n % cfg.chapter_utts:04d}"
                items.append({
                    "utt": utt,
                    "path": os.path.join(out, str(spk.id), str(chap), utt + ".flac"),
                    "spoken": spoken,
                    "words": " ".join(words),
                    "voice": spk.voice,
                    "pitch": spk.pitch,
                    "pitch_range": spk.pitch_range,
                    "rate": spk.rate,
                    "espeak_seed": int(rng.integers(1, 2 ** 31)),
                    "level": float(rng.uniform(*cfg.level)),
                    "room_seed": int(rng.integers(2 ** 63)),
                    "room": {"snr_min": cfg.snr[0], "snr_max": cfg.snr[1],
                             "rt60_min": cfg.rt60[0], "rt60_max": cfg.rt60[1]},
                })
                total += _estimate_seconds(spoken, spk.rate)
                n += 1
                index += 1
        if subset == "dev":
            dev_next = p
    return items


def plan_babble_bank(cfg, variants, sentences, clips=6, sentences_per_clip=3):
    """Requests for the clips of other voices that babble noise is cut from (``other`` only)."""
    if cfg.condition != "other":
        return []
    rng = np.random.default_rng([cfg.seed, 4])
    pool = sentences["train"]
    plan = []
    for _ in range(clips):
        idx = rng.choice(len(pool), sentences_per_clip, replace=False)
        accent = cfg.accents[int(rng.integers(len(cfg.accents)))]
        plan.append({
            "spoken": " ".join(pool[i][0] for i in idx),
            "voice": f"{accent}+{variants[int(rng.integers(len(variants)))]}",
            "pitch": int(rng.integers(20, 80)),
            "pitch_range": 50,
            "rate": int(rng.integers(140, 200)),
            "espeak_seed": int(rng.integers(1, 2 ** 31)),
        })
    return plan


def babble_clip(item):
    """One babble-bank clip at 16 kHz (float64)."""
    wav = espeak.synthesize(item["spoken"], item["voice"], item["pitch"], item["pitch_range"],
                            item["rate"], item["espeak_seed"])
    return resample(wav, espeak.ESPEAK_RATE, SAMPLE_RATE)


def render(item, condition, bank):
    """Synthesise one planned utterance; float64 16 kHz audio and the room parameters."""
    wav = espeak.synthesize(item["spoken"], item["voice"], item["pitch"], item["pitch_range"],
                            item["rate"], item["espeak_seed"])
    y = resample(wav, espeak.ESPEAK_RATE, SAMPLE_RATE).astype(np.float64)
    params = {}
    if condition == "other":
        y, params = room.degrade(y, SAMPLE_RATE, np.random.default_rng(item["room_seed"]),
                                 config=room.RoomConfig(**item["room"]), babble_bank=bank)
    y *= item["level"] / (np.max(np.abs(y)) + 1e-9)
    return y, params


def write_flac(path, y):
    pcm = np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(path, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


_fork_bank = None  # the babble bank, set in the parent just before forking workers


def synth_items(out_dir, items, condition, bank=None, progress=False):
    """Render and write a list of planned utterances; returns their durations in seconds."""
    bank = _fork_bank if bank is None else bank

    durs = []
    for item in tqdm(items, desc="synth", unit="utt", disable=not progress or None):
        y, _ = render(item, condition, bank)
        path = os.path.join(out_dir, item["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_flac(path, y)
        durs.append(len(y) / SAMPLE_RATE)
    return durs


def _write_text_files(out_dir, items):
    by_chapter = {}
    for it in items:
        by_chapter.setdefault(os.path.dirname(it["path"]), []).append(it)
    for chap_dir, its in by_chapter.items():
        spk, chap = its[0]["utt"].split("-")[:2]
        its = sorted(its, key=lambda i: i["utt"])
        lines = "".join(f"{it['utt']} {it['words']}\n" for it in its)
        with open(os.path.join(out_dir, chap_dir, f"{spk}-{chap}.trans.txt"), "w") as f:
            f.write(lines)


def _write_speakers(out_dir, speakers, minutes):
    lines = [
        "; Synthetic espeak-ng speakers (asrkd synth-corpus); NAME is voice, pitch, range, wpm\n",
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
    ]
    for s in speakers:
        lines.append(f"{s.id:<5}| {s.sex} | {s.subset:<16} | {minutes[s.id]:5.2f} | {s.name}\n")
    with open(os.path.join(out_dir, "SPEAKERS.TXT"), "w") as f:
        f.writelines(lines)


def synth_corpus(out_dir, hours=1.0, condition="clean", seed=0, nj=1, num_speakers=None,
                 unlabeled_hours=0.0, config=None, log_dir=None, test_speakers=None,
                 dev_speakers=None):
    """Generate the corpus into ``out_dir`` (replacing its subsets); return a summary dict.

    Args:
        hours: training audio in hours (approximate); dev and test get ``dev_fraction`` and
            ``test_fraction`` of it (10% each by default).
        condition: ``clean`` (dry synthetic speech) or ``other`` (reverberation + noise).
        seed: everything random derives from it; same arguments -> byte-identical files.
        nj: parallel jobs (does not change the output).
        num_speakers: training speakers (default: max(4, 40 per hour)); dev and test get
            max(2, 20%) each.
        unlabeled_hours: audio of the ``unlabeled`` subset (0: none), from
            ``num_speakers * unlabeled_hours / hours`` further speakers.
        test_speakers: test speakers (None: as many as dev), each with a dev speaker's amount of
            audio; the first max(2, 20%) are those of the default test set.
        dev_speakers: dev speakers (None: max(2, 20%)), each with a default dev speaker's audio;
            the first are the default dev set's, and the other subsets do not change.
        config: a SynthConfig for the remaining knobs (its hours/condition/seed/num_speakers/
            unlabeled_hours are overridden by the arguments).
    Returns:
        dict with the arguments, per-subset speakers / utterances / hours, and out_dir.
    """
    cfg = SynthConfig(**asdict(config)) if config is not None else SynthConfig()
    cfg.hours, cfg.condition, cfg.seed, cfg.num_speakers = hours, condition, seed, num_speakers
    cfg.unlabeled_hours = unlabeled_hours
    if test_speakers is not None:
        cfg.test_speakers = test_speakers
    if dev_speakers is not None:
        cfg.dev_speakers = dev_speakers
    _check(cfg, nj)
    variants = usable_variants()
    sentences = text.split_sentences(cfg.min_words, cfg.max_words)
    speakers = plan_speakers(cfg, variants)
    items = plan_utterances(cfg, speakers, sentences)
    bank_plan = plan_babble_bank(cfg, variants, sentences)

    os.makedirs(out_dir, exist_ok=True)
    for subset in SUBSETS + (UNLABELED,):
        shutil.rmtree(os.path.join(out_dir, subset), ignore_errors=True)
    log_dir = log_dir or os.path.join(out_dir, "log")
    if nj == 1 or not bank_plan:
        bank = [babble_clip(item) for item in bank_plan]
    else:
        bank = run_jobs(babble_clip, [(item,) for item in bank_plan], nj, log_dir, "babble",
                        desc="babble")
    if nj == 1:
        durs = synth_items(out_dir, items, cfg.condition, bank, progress=True)
    else:
        global _fork_bank
        _fork_bank = bank  # forked workers inherit it; passing it would pickle MBs per job
        try:
            # many small jobs so the progress bar moves and the cores stay busy to the end
            n_jobs = max(nj * 8, min(len(items) // 50, nj * 50))
            chunks = [c for c in split_evenly(items, n_jobs) if c]
            parts = run_jobs(synth_items, [(out_dir, c, cfg.condition) for c in chunks],
                             nj, log_dir, "synth", desc="synth")
        finally:
            _fork_bank = None
        durs = [d for part in parts for d in part]
    _write_text_files(out_dir, items)

    minutes = {s.id: 0.0 for s in speakers}
    summary = {"out_dir": os.path.abspath(out_dir), "config": asdict(cfg), "subsets": {}}
    for it, d in zip(items, durs):
        minutes[int(it["utt"].split("-")[0])] += d / 60
    for subset in subsets(cfg):
        sub = [(it, d) for it, d in zip(items, durs) if it["path"].startswith(subset + os.sep)]
        summary["subsets"][subset] = {
            "speakers": sum(s.subset == subset for s in speakers),
            "utterances": len(sub),
            "hours": round(sum(d for _, d in sub) / 3600, 4),
        }
    _write_speakers(out_dir, speakers, minutes)
    with open(os.path.join(out_dir, "train-text.txt"), "w") as f:
        f.writelines(" ".join(w) + "\n" for _, w in sentences["train"])
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        # no absolute path in the file: two runs into different dirs stay byte-identical
        json.dump({k: v for k, v in summary.items() if k != "out_dir"}, f, indent=1, sort_keys=True)
        f.write("\n")
    return summary
