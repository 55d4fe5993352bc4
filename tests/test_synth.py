"""The synthetic corpus: layout, determinism, split hygiene, the `other` condition, errors."""

import os
import re

import numpy as np
import pytest
import soundfile as sf

from asrkd.errors import UserError
from asrkd.synth import SynthConfig, synth_corpus
from asrkd.synth.corpus import SUBSETS, plan_speakers, plan_utterances, usable_variants
from asrkd.synth.resample import resample
from asrkd.synth.text import cmudict_words, split_sentences

HOURS = 0.01


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return out, synth_corpus(out, hours=HOURS, condition="clean", seed=3, nj=1)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    out = tmp_path_factory.mktemp("other")
    return out, synth_corpus(out, hours=HOURS, condition="other", seed=3, nj=1)


def _files(root):
    """relative path -> bytes of every corpus file (job logs excluded)."""
    out = {}
    for d, _, names in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel.split(os.sep)[0] == "log":
            continue
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.normpath(os.path.join(rel, n))] = f.read()
    return out


def _transcripts(root, subset):
    text = {}
    for d, _, names in os.walk(os.path.join(root, subset)):
        for n in names:
            if n.endswith(".trans.txt"):
                with open(os.path.join(d, n)) as f:
                    for line in f:
                        utt, words = line.rstrip("\n").split(" ", 1)
                        text[utt] = words
    return text


def _speakers_txt(root):
    rows = {}
    with open(os.path.join(root, "SPEAKERS.TXT")) as f:
        for line in f:
            if line.startswith(";"):
                continue
            spk, sex, subset, minutes, name = [x.strip() for x in line.split("|")]
            rows[int(spk)] = (sex, subset, float(minutes), name)
    return rows


def test_librispeech_layout(clean):
    root, summary = clean
    vocab = cmudict_words()
    speakers = _speakers_txt(root)
    for subset in SUBSETS:
        text = _transcripts(root, subset)
        assert len(text) == summary["subsets"][subset]["utterances"] > 0
        flacs = set()
        for spk in os.listdir(root / subset):
            assert spk.isdigit() and speakers[int(spk)][1] == subset
            for chap in os.listdir(root / subset / spk):
                assert chap.isdigit()
                names = sorted(os.listdir(root / subset / spk / chap))
                assert f"{spk}-{chap}.trans.txt" in names
                lines = open(root / subset / spk / chap / f"{spk}-{chap}.trans.txt").read()
                keys = [ln.split(" ", 1)[0] for ln in lines.splitlines()]
                assert keys == sorted(keys)
                for n in names:
                    if n.endswith(".flac"):
                        assert re.fullmatch(rf"{spk}-{chap}-\d{{4}}\.flac", n)
                        flacs.add(n[:-5])
                        info = sf.info(str(root / subset / spk / chap / n))
                        got = (info.samplerate, info.channels, info.subtype)
                        assert got == (16000, 1, "PCM_16")
                        assert 0.5 < info.duration < 15
        assert flacs == set(text)
        for words in text.values():
            assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", words)
            assert all(w.lower() in vocab for w in words.split())
            assert SynthConfig.min_words <= len(words.split()) <= SynthConfig.max_words
    # the training hours asked for, give or take the duration estimate
    assert 0.7 * HOURS < summary["subsets"]["train"]["hours"] < 1.5 * HOURS
    lm = open(root / "train-text.txt").read().splitlines()
    assert len(lm) > 20000 and all(re.fullmatch(r"[A-Z']+( [A-Z']+)*", s) for s in lm[:1000])


def test_speakers_disjoint_and_test_text_unseen(clean):
    root, _ = clean
    spk = {s: {u.split("-")[0] for u in _transcripts(root, s)} for s in SUBSETS}
    assert len(spk["train"]) >= 4 and len(spk["dev"]) >= 2 and len(spk["test"]) >= 2
    assert not spk["train"] & spk["dev"] and not spk["train"] & spk["test"]
    assert not spk["dev"] & spk["test"]
    names = {r[3] for r in _speakers_txt(root).values()}
    assert len(names) == len(_speakers_txt(root))  # distinct voice settings
    train_text = set(_transcripts(root, "train").values())
    lm_text = set(open(root / "train-text.txt").read().splitlines())
    assert train_text <= lm_text
    for subset in ("dev", "test"):
        held = set(_transcripts(root, subset).values())
        assert not held & train_text and not held & lm_text


def test_same_arguments_same_bytes_whatever_nj(other, tmp_path):
    root, _ = other
    synth_corpus(tmp_path / "again", hours=HOURS, condition="other", seed=3, nj=2)
    a, b = _files(root), _files(tmp_path / "again")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    synth_corpus(tmp_path / "seed4", hours=HOURS, condition="other", seed=4, nj=1)
    c = _files(tmp_path / "seed4")
    assert a["SPEAKERS.TXT"] != c["SPEAKERS.TXT"]


def _floor_db(x, frame=400):
    """Quiet-frame level relative to loud-frame level: near silence clean, noise floor other."""
    n = len(x) // frame
    rms = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(1) + 1e-12)
    return 20 * np.log10(np.percentile(rms, 5) / np.percentile(rms, 95))


def test_other_is_reverberant_and_noisy(clean, other):
    (croot, _), (oroot, _) = clean, other
    assert _transcripts(croot, "train") == _transcripts(oroot, "train")  # same plan
    gaps = []
    for d, _, names in os.walk(croot / "train"):
        for n in names:
            if n.endswith(".flac"):
                a, _ = sf.read(os.path.join(d, n))
                b, _ = sf.read(os.path.join(str(oroot), os.path.relpath(d, croot), n))
                assert len(a) == len(b) and not np.allclose(a, b, atol=1e-3)
                gaps.append(_floor_db(b) - _floor_db(a))
    assert np.median(gaps) > 6.0


def test_room_ranges_and_accents(tmp_path):
    """--snr/--rt60 set the drawn room (a milder range leaves less noise), --accents the voices."""
    loud = SynthConfig(snr=(0.0, 0.0), rt60=(0.2, 0.2))
    mild = SynthConfig(snr=(30.0, 30.0), rt60=(0.2, 0.2), accents=("en-us",))
    floors = {}
    for name, cfg in (("loud", loud), ("mild", mild)):
        synth_corpus(tmp_path / name, hours=HOURS, condition="other", seed=3, config=cfg)
        floors[name] = [_floor_db(sf.read(os.path.join(d, n))[0])
                        for d, _, names in os.walk(tmp_path / name / "train")
                        for n in names if n.endswith(".flac")]
    # 30 dB less noise against the same speech level: the quiet frames are far quieter
    assert np.median(floors["loud"]) - np.median(floors["mild"]) > 15.0
    names = [row[3] for row in _speakers_txt(tmp_path / "mild").values()]
    assert names and all(n.startswith("en-us+") for n in names)
    assert any(not n.startswith("en-us+") for n in
               (row[3] for row in _speakers_txt(tmp_path / "loud").values()))


def test_plan_at_one_hour():
    cfg = SynthConfig(hours=1.0)
    speakers = plan_speakers(cfg, usable_variants())
    train = [s for s in speakers if s.subset == "train"]
    assert len(train) >= 40
    keys = {(s.accent, s.variant, s.pitch, s.pitch_range, s.rate) for s in speakers}
    assert len(keys) == len(speakers)
    # fewer speakers than variants: held-out speakers use unseen voice variants
    assert not {s.variant for s in train} & {s.variant for s in speakers if s.subset != "train"}
    from asrkd.synth.corpus import _estimate_seconds

    items = plan_utterances(cfg, speakers, split_sentences())
    rate = {f"{s.accent}+{s.variant}": s.rate for s in speakers}
    secs = [_estimate_seconds(i["spoken"], rate[i["voice"]]) for i in items
            if i["path"].startswith("train")]
    assert 3300 < sum(secs) < 3900 and 3.0 < np.mean(secs) < 6.0
    assert len({i["utt"] for i in items}) == len(items)


def test_unlabeled_subset_changes_nothing_else_and_uses_no_held_out_voice():
    base = SynthConfig(hours=1.0)
    more = SynthConfig(hours=1.0, unlabeled_hours=0.5)
    variants, sentences = usable_variants(), split_sentences()
    s0, s1 = plan_speakers(base, variants), plan_speakers(more, variants)
    assert s1[:len(s0)] == s0  # train/dev/test speakers unchanged
    unl = [s for s in s1 if s.subset == "unlabeled"]
    assert len(unl) == round(0.5 * sum(s.subset == "train" for s in s0))
    held = {s.variant for s in s0 if s.subset in ("dev", "test")}
    assert unl and not {s.variant for s in unl} & held
    assert len({s.id for s in s1}) == len(s1)
    i0, i1 = plan_utterances(base, s0, sentences), plan_utterances(more, s1, sentences)
    assert i1[:len(i0)] == i0  # and so are their utterances
    extra = i1[len(i0):]
    assert extra and all(i["path"].startswith("unlabeled" + os.sep) for i in extra)
    train_text = {" ".join(w) for _, w in sentences["train"]}
    assert all(i["words"] in train_text for i in extra)  # training books only


def test_more_test_speakers_keep_the_default_test_set():
    base = SynthConfig(hours=0.5, num_speakers=40, unlabeled_hours=0.5)
    more = SynthConfig(hours=0.5, num_speakers=40, unlabeled_hours=0.5, test_speakers=32)
    variants, sentences = usable_variants(), split_sentences()
    s0, s1 = plan_speakers(base, variants), plan_speakers(more, variants)
    test0 = [s for s in s0 if s.subset == "test"]
    test1 = [s for s in s1 if s.subset == "test"]
    assert len(test0) == 8 and len(test1) == 32 and test1[:8] == test0
    assert [s for s in s1 if s.subset in ("train", "dev")] == \
        [s for s in s0 if s.subset in ("train", "dev")]
    # still no training voice among the test speakers (88 variants for 80 speakers)
    train_variants = {s.variant for s in s1 if s.subset == "train"}
    assert not train_variants & {s.variant for s in test1}
    i0, i1 = plan_utterances(base, s0, sentences), plan_utterances(more, s1, sentences)
    first = {str(s.id) for s in test0}
    t0 = [i for i in i0 if i["path"].startswith("test")]
    t1 = [i for i in i1 if i["path"].startswith("test") and i["utt"].split("-")[0] in first]
    assert [(i["utt"], i["words"], i["espeak_seed"]) for i in t0] == \
        [(i["utt"], i["words"], i["espeak_seed"]) for i in t1]
    # four times the speakers, about four times the audio
    n0 = sum(i["path"].startswith("test") for i in i0)
    n1 = sum(i["path"].startswith("test") for i in i1)
    assert 3.3 < n1 / n0 < 4.7


@pytest.mark.parametrize("kwargs, message", [
    ({"condition": "noisy"}, "unknown condition"),
    ({"hours": 0}, "hours"),
    ({"hours": -1.0}, "hours"),
    ({"nj": 0}, "nj"),
    ({"num_speakers": 0}, "num-speakers"),
    ({"unlabeled_hours": -0.5}, "unlabeled-hours"),
    ({"test_speakers": 0}, "test-speakers"),
    ({"dev_speakers": 0}, "dev-speakers"),
    ({"config": SynthConfig(snr=(20.0, 10.0))}, "--snr"),
    ({"config": SynthConfig(rt60=(0.0, 0.5))}, "--rt60"),
    ({"config": SynthConfig(accents=("en-martian",))}, "en-martian"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        synth_corpus(tmp_path, **kwargs)


def test_cli(tmp_path, capsys):
    from asrkd.cli import main

    with pytest.raises(SystemExit) as e:
        main(["synth-corpus", "--help"])
    assert e.value.code == 0 and "--condition" in capsys.readouterr().out
    assert main(["synth-corpus", str(tmp_path), "--condition", "loud"]) == 1
    assert "unknown condition" in capsys.readouterr().err


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    y = resample(np.sin(2 * np.pi * 1000 * t), 22050, 16000)
    assert len(y) == 16000
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(y - ref)[50:-50].max() < 1e-3


def test_more_dev_speakers_keep_every_other_subset():
    base = SynthConfig(hours=0.5, num_speakers=40, unlabeled_hours=0.5, test_speakers=32)
    more = SynthConfig(hours=0.5, num_speakers=40, unlabeled_hours=0.5, test_speakers=32,
                       dev_speakers=16)
    variants, sentences = usable_variants(), split_sentences()
    s0, s1 = plan_speakers(base, variants), plan_speakers(more, variants)
    assert s1[:len(s0)] == s0  # the extra dev speakers come last
    dev0 = [s for s in s0 if s.subset == "dev"]
    dev1 = [s for s in s1 if s.subset == "dev"]
    assert len(dev0) == 8 and len(dev1) == 16 and dev1[:8] == dev0
    # their voices: the test speakers' variants, never a training or unlabeled one
    extra = {s.variant for s in dev1[8:]}
    assert extra <= {s.variant for s in s1 if s.subset == "test"}
    assert not extra & {s.variant for s in s1 if s.subset in ("train", "unlabeled")}
    assert len({(s.accent, s.variant, s.pitch, s.pitch_range, s.rate) for s in s1}) == len(s1)
    i0, i1 = plan_utterances(base, s0, sentences), plan_utterances(more, s1, sentences)
    assert i1[:len(i0)] == i0  # every utterance of the default corpus, unchanged
    added = i1[len(i0):]
    assert added and all(i["path"].startswith("dev" + os.sep) for i in added)
    assert {i["utt"].split("-")[0] for i in added} == {str(s.id) for s in dev1[8:]}
    dev_items = [i for i in i1 if i["path"].startswith("dev" + os.sep)]
    assert len({i["words"] for i in dev_items}) == len(dev_items)  # no sentence twice in dev
    dev_text = {" ".join(w) for _, w in sentences["dev"]}
    assert all(i["words"] in dev_text for i in added)  # dev books only
    assert len({i["utt"] for i in i1}) == len(i1)
    # twice the speakers, about twice the audio
    n0 = sum(i["path"].startswith("dev" + os.sep) for i in i0)
    assert 1.6 < len(dev_items) / n0 < 2.4
