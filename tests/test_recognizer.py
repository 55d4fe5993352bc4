"""Recognizer (waveforms -> words in Python) and decode.json (a model carries its decoding setup:
`asrkd decode` writes it when it tunes the scale on dev; transcribe and Recognizer use it)."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import soundfile

from asrkd import Recognizer
from asrkd.cli import main
from asrkd.decodeconf import DecodeConfig, read_decode_config
from asrkd.errors import UserError
from asrkd.table import read_table
from asrkd.transcribe import transcribe


def _bare_model(tiny_hybrid, tmp_path):
    """A copy of the tiny DNN's dir with final.pt only (no decode dirs, no decode.json)."""
    d = tmp_path / "dnn"
    d.mkdir()
    shutil.copyfile(os.path.join(tiny_hybrid["model"], "final.pt"), d / "final.pt")
    return str(d)


def test_a_dev_grid_decode_writes_decode_json_and_transcribe_decodes_with_it(
        tiny_hybrid, tiny_data, tmp_path, capsys):
    """decode on dev over a grid, with narrow beams: MODEL/decode.json holds them, the chosen
    scale, the priors and the graph; a test decode at that scale leaves it alone; transcribe
    with no graph and no options then gives that test decode's words, utterance for utterance."""
    model, graph = _bare_model(tiny_hybrid, tmp_path), tiny_hybrid["graph"]
    opts = ["--beam", "9", "--max-active", "500", "--lattice-beam", "2"]
    assert main(["decode", *opts, "--acwt-grid", "0.1,0.25", graph, tiny_data["dev"], model,
                 f"{model}/decode_dev"]) == 0
    conf = read_decode_config(model)
    best = float(open(f"{model}/decode_dev/best_acwt").read())
    assert conf == DecodeConfig(acwt=best, beam=9.0, lattice_beam=2.0, max_active=500,
                                priors="counts", graph_dir=os.path.abspath(graph),
                                tuned_on=os.path.abspath(f"{model}/decode_dev"))
    written = open(f"{model}/decode.json").read()
    assert main(["decode", *opts, "--acwt-from", f"{model}/decode_dev", graph, tiny_data["test"],
                 model, f"{model}/decode_test"]) == 0
    assert open(f"{model}/decode.json").read() == written  # only a dev grid writes it
    capsys.readouterr()
    assert main(["transcribe", model, os.path.join(tiny_data["test"], "wav.scp")]) == 0
    cap = capsys.readouterr()
    got = dict((line + " ").split(" ", 1) for line in cap.out.splitlines())
    want = read_table(f"{model}/decode_test/hyp.txt")
    assert {k: v.split() for k, v in got.items()} == {k: v.split() for k, v in want.items()}
    assert f"acwt {best:g}, beam 9, max-active 500, priors counts" in cap.err
    # an explicit option wins over decode.json
    rec = Recognizer(model, beam=12.0, acwt=0.3)
    assert (rec.beam, rec.max_active, rec.acwt, rec.graph_dir) == (12.0, 500, 0.3, conf.graph_dir)


def test_a_model_without_graph_or_with_a_bad_decode_json_is_a_clear_error(tiny_hybrid,
                                                                           tmp_path):
    model = _bare_model(tiny_hybrid, tmp_path)
    with pytest.raises(UserError, match="no graph dir given and no decode.json"):
        Recognizer(model, acwt=0.25)
    with open(os.path.join(model, "decode.json"), "w") as f:
        json.dump({"acwt": 0.2, "beam": -3}, f)
    with pytest.raises(UserError, match="--beam and --lattice-beam must be positive"):
        Recognizer(model, tiny_hybrid["graph"])
    with open(os.path.join(model, "decode.json"), "w") as f:
        f.write("{")
    with pytest.raises(UserError, match="decode.json: not JSON"):
        Recognizer(model, tiny_hybrid["graph"])


def test_waveforms_give_the_words_files_give(tiny_hybrid, tiny_data, tmp_path):
    """A waveform in memory is a file's audio: the same features, per-utterance CMVN and
    search, so the words of `transcribe` on the file; a stereo copy is downmixed (with a
    warning) to the same words; every word has a time span, in order and inside the audio,
    and a confidence in (0, 1]."""
    paths = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).values())[:3]
    files = transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], paths, acwt=0.25,
                       out=io.StringIO())["hyps"]
    rec = Recognizer(tiny_hybrid["model"], tiny_hybrid["graph"], acwt=0.25)
    audio = [soundfile.read(p, dtype="float32") for p in paths]
    results = rec.transcribe_batch(audio)
    assert [r.text for r in results] == [files[p] for p in paths]
    assert sum(len(r.words) for r in results) > 0
    x, sr = audio[0]
    for r, (a, rate) in zip(results, audio):
        assert not r.warnings and len(r.times) == len(r.confidence) == len(r.words)
        ends = [0.0] + [t for span in r.times for t in span]
        assert ends == sorted(ends) and ends[-1] <= len(a) / rate + 0.03
        assert all(e > b for b, e in r.times) and all(0 < c <= 1 for c in r.confidence)
    assert abs(results[0].audio_s - len(x) / sr) < 1e-9
    with pytest.warns(UserWarning, match="2 channels: downmixed"):
        stereo = rec.transcribe(np.stack([x, x], axis=1), sr)
    assert stereo.words == results[0].words and len(stereo.warnings) == 1


def test_short_and_empty_results_warn(tiny_hybrid, tiny_data):
    """0.05 s of audio (3 frames) and 0.01 s (none) warn that they are too short; an input that
    gives no words warns so, through on_warning."""
    got = []
    rec = Recognizer(tiny_hybrid["model"], tiny_hybrid["graph"], acwt=0.25, on_warning=got.append)
    path = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).values())[0]
    x, sr = soundfile.read(path, dtype="float32")
    short = rec.transcribe(x[:800], sr)
    assert short.segments == [3] and got == ["waveform: 0.050 s of audio: too short for a word"]
    none = rec.transcribe(x[:160], sr)
    assert none.words == [] and none.segments == [] and "too short for one frame" in got[-1]
    rec.decode_segment = lambda *a: []  # a search that finds nothing
    empty = rec.transcribe(x, sr)
    assert empty.words == [] and empty.warnings == [
        "no words recognised (silence, or no path through the graph)"]
    assert got[-1] == "waveform: " + empty.warnings[0]
