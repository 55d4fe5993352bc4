"""transcribe: audio files -> words with the features, CMVN, priors and acoustic scale that
`asrkd decode` uses on a data dir; resampling; the CLI's inputs (files, wav.scp, stdin)."""

import io
import os

import kaldialign
import numpy as np
import pytest
import soundfile

from asrkd.cli import main
from asrkd.decode import decode
from asrkd.errors import UserError
from asrkd.features import resample
from asrkd.table import read_table
from asrkd.transcribe import transcribe


@pytest.fixture(scope="module")
def decoded(tiny_hybrid, tiny_data):
    """The DNN's decode of tiny test (fixed scale), written where transcribe looks for it."""
    model = tiny_hybrid["model"]
    decode(tiny_hybrid["graph"], tiny_data["test"], model, os.path.join(model, "decode_test"),
           acwt=0.25)
    return read_table(os.path.join(model, "decode_test", "hyp.txt"))


def test_wav_scp_gives_decodes_hypotheses(tiny_hybrid, tiny_data, decoded):
    """Same features, per-speaker CMVN (utt2spk beside wav.scp), priors and the scale remembered
    from the model's decode dir: the words of `asrkd decode`, utterance for utterance."""
    out = io.StringIO()
    res = transcribe(tiny_hybrid["model"], tiny_hybrid["graph"],
                     [os.path.join(tiny_data["test"], "wav.scp")], out=out)
    assert res["acwt"] == 0.25
    lines = dict(line.split(" ", 1) for line in out.getvalue().splitlines())
    assert {k: v.strip() for k, v in lines.items()} == {k: v.strip() for k, v in decoded.items()}
    assert sum(len(v.split()) for v in decoded.values()) > 0
    assert 0 < res["rtf"] < 10 and res["audio_s"] > 1


def test_loose_file_uses_its_own_cmvn_and_resamples(tiny_hybrid, tiny_data, tmp_path, capsys):
    wav = read_table(os.path.join(tiny_data["test"], "wav.scp"))
    utt, path = sorted(wav.items())[0]
    x, sr = soundfile.read(path, dtype="float32")
    res = transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], [path], out=io.StringIO())
    words = res["hyps"][path]
    # the same audio at 22.05 kHz: resampled back (with a note), about the same words
    odd = str(tmp_path / "odd.wav")
    soundfile.write(odd, resample(x, sr, 22050), 22050, subtype="FLOAT")
    out = io.StringIO()
    res2 = transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], [odd], out=out)
    assert "resampling 22050 Hz -> 16000 Hz" in capsys.readouterr().err
    assert out.getvalue().count("\n") == 1  # words only: no key for a file given as such
    a, b = words.split(), res2["hyps"][odd].split()
    assert len(set(a) & set(b)) >= 0.5 * max(len(a), len(b), 1)
    with pytest.raises(UserError, match="sample rate 22050"):
        transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], [odd], resample=False)


def test_resample_keeps_a_tone():
    sr = 22050
    t = np.arange(sr) / sr
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), sr, 16000)
    assert len(y) == 16000
    ref = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(y - ref)[100:-100].max() < 1e-3


def test_cli_reads_stdin_and_rejects_bad_input(tiny_hybrid, tiny_data, monkeypatch, capsys):
    wav = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).items())[:2]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{u} {p}\n" for u, p in wav)))
    assert main(["transcribe", tiny_hybrid["model"], tiny_hybrid["graph"], "-"]) == 0
    cap = capsys.readouterr()
    assert [line.split()[0] for line in cap.out.splitlines()] == [u for u, _ in wav]
    assert "real-time factor" in cap.err
    assert main(["transcribe", tiny_hybrid["model"], tiny_hybrid["graph"], "nope.flac"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_no_known_scale_or_a_gmm_is_a_clear_error(tiny_hybrid, tiny_data, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(os.path.join(tiny_hybrid["model"], "final.pt"), bare / "final.pt")
    wav = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).values())[:1]
    with pytest.raises(UserError, match="no acoustic scale known"):
        transcribe(str(bare), tiny_hybrid["graph"], wav)
    res = transcribe(str(bare), tiny_hybrid["graph"], wav, acwt=0.25, out=io.StringIO())
    assert res["acwt"] == 0.25
    with pytest.raises(UserError, match="GMM"):
        transcribe(tiny_hybrid["graph"], tiny_hybrid["graph"], wav, acwt=0.1)


def test_a_feature_config_other_than_the_models_is_refused(tiny_hybrid, tiny_data, tmp_path):
    """The checkpoint's training data dir is recomputed with the config: another framing is a
    clear error rather than silently different features of the same dimension."""
    conf = tmp_path / "fbank.yaml"
    conf.write_text("type: fbank\nlow_freq: 100\n")
    wav = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).values())[:1]
    with pytest.raises(UserError, match="does not reproduce"):
        transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], wav, feat_conf=str(conf))
    conf.write_text("type: fbank\n")
    res = transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], wav, feat_conf=str(conf),
                     out=io.StringIO())
    assert len(res["hyps"]) == 1


def test_multi_channel_audio_needs_a_channel_or_mix(tiny_hybrid, tiny_data, decoded, tmp_path,
                                                  capsys):
    """Two channels (speech, and speech turned down) are not silently read as the first: the
    CLI refuses them in one line; --channel 0 is the mono file's words, --channel mix runs."""
    wav = read_table(os.path.join(tiny_data["test"], "wav.scp"))
    path = sorted(wav.values())[0]
    x, sr = soundfile.read(path, dtype="float32")
    stereo = str(tmp_path / "stereo.wav")
    soundfile.write(stereo, np.stack([x, 0.1 * x[::-1]], axis=1), sr, subtype="FLOAT")
    args = ["transcribe", tiny_hybrid["model"], tiny_hybrid["graph"], stereo]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"asrkd transcribe: error: {stereo}: 2 channels: name one with --channel N (0 to 1) " \
        "or downmix them with --channel mix" in err and "Traceback" not in err
    mono = transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], [path], out=io.StringIO())
    first = transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], [stereo], out=io.StringIO(),
                       channel="0")
    assert first["hyps"][stereo] == mono["hyps"][path]
    assert main(args + ["--channel", "mix"]) == 0
    assert main(args + ["--channel", "2"]) == 1
    assert f"{stereo}: no channel 2 (it has 2)" in capsys.readouterr().err
    assert main(args + ["--channel", "left"]) == 1
    assert "--channel 'left': give a channel index (0, 1, ...) or 'mix'" in capsys.readouterr().err


def test_a_long_recording_is_cut_between_its_utterances(tiny_hybrid, tiny_data, tmp_path):
    """Three test utterances, each centred in a piece of P = (longest + 1 s) of digital silence,
    make one recording of 3P; --max-segment 1.15 P forces two cuts, each searched in a window
    that holds one pause between utterances. The cuts fall in those pauses, and the words are
    nearly those of the pieces transcribed as one speaker's utterances: at most a third of them
    differ (2 of 12 here). Not all: the segments carry other amounts of silence than the pieces
    (so CMVN statistics differ by a few silent frames), and this tiny model on a uniform word
    loop changes words for less (the same raw frames of a segment, normalised by the segment's
    own statistics, change 3 of its 5 words)."""
    wav = read_table(os.path.join(tiny_data["test"], "wav.scp"))
    utts = sorted(wav)[:3]
    xs = [soundfile.read(wav[u], dtype="float32")[0] for u in utts]
    piece = max(len(x) for x in xs) + 16000
    pieces, speech = [], []
    for i, x in enumerate(xs):
        a = (piece - len(x)) // 2
        pieces.append(np.concatenate([np.zeros(a, np.float32), x,
                                      np.zeros(piece - len(x) - a, np.float32)]))
        speech.append((i * piece + a, i * piece + a + len(x)))
    long = str(tmp_path / "long.wav")
    y = np.concatenate(pieces)
    soundfile.write(long, y, 16000, subtype="PCM_16")
    model, graph = tiny_hybrid["model"], tiny_hybrid["graph"]
    res = transcribe(model, graph, [long], out=io.StringIO(), acwt=0.25,
                     max_segment=1.15 * piece / 16000)
    ends = res["segments"][long]
    assert len(ends) == 3 and ends[-1] == 1 + (3 * piece - 400) // 160
    for i, cut in enumerate(ends[:-1]):  # frame `cut` (samples 160 cut .. +400) is silent
        assert speech[i][1] <= 160 * cut and 160 * cut + 400 <= speech[i + 1][0]
    hyp = res["hyps"][long].split()
    assert len(hyp) >= 3

    def one_speaker(name, parts):
        d = tmp_path / name
        d.mkdir()
        for i, p in enumerate(parts):
            soundfile.write(str(d / f"{i}.wav"), p, 16000, subtype="PCM_16")
        (d / "wav.scp").write_text("".join(f"u{i} {d}/{i}.wav\n" for i in range(len(parts))))
        (d / "utt2spk").write_text("".join(f"u{i} one\n" for i in range(len(parts))))
        out = transcribe(model, graph, [str(d / "wav.scp")], out=io.StringIO(), acwt=0.25)
        return " ".join(out["hyps"][f"u{i}"] for i in range(len(parts))).split()

    ref = one_speaker("pieces", pieces)
    assert kaldialign.edit_distance(ref, hyp)["total"] <= len(ref) / 3
    with pytest.raises(UserError, match="--max-segment must be >= 1"):
        transcribe(model, graph, [long], acwt=0.25, max_segment=0.5)


def test_every_input_is_keyed_and_a_bad_file_does_not_stop_the_others(tiny_hybrid, tiny_data,
                                                                      tmp_path, capsys):
    """Loose files print 'path words' (the path as given); a file that is not audio and one
    that is missing each get an error line and are counted; the files after them are still
    transcribed, and the exit status says something failed."""
    good = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).values())[:2]
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio\n")
    missing = str(tmp_path / "missing.wav")
    args = ["transcribe", "--acwt", "0.25", tiny_hybrid["model"], tiny_hybrid["graph"]]
    assert main(args + [good[0], str(bad), missing, good[1]]) == 1
    cap = capsys.readouterr()
    assert [line.split(" ", 1)[0] for line in cap.out.splitlines()] == good
    errors = [line for line in cap.err.splitlines() if "error:" in line]
    assert len(errors) == 2
    assert errors[0].startswith(f"asrkd transcribe: error: {bad}: cannot read audio")
    assert errors[1] == f"asrkd transcribe: error: {missing}: no such audio file"
    assert "transcribe: 2 file(s) in 2 segment(s) (2 failed)" in cap.err
    assert main(args + good) == 0


def test_files_are_read_one_after_the_other(tiny_hybrid, tiny_data, monkeypatch):
    """Loose files: a file's features are computed, its words written, then the next file's
    (not every file's features first)."""
    from asrkd import recognizer

    events = []
    real = recognizer.file_features

    def logged(path, *a, **k):
        events.append(("features", path))
        return real(path, *a, **k)

    class Out(io.StringIO):
        def write(self, s):
            events.append(("words", s.split(" ", 1)[0]))
            return super().write(s)

    monkeypatch.setattr(recognizer, "file_features", logged)
    paths = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).values())[:3]
    transcribe(tiny_hybrid["model"], tiny_hybrid["graph"], paths, acwt=0.25, out=Out())
    assert events == [(e, p) for p in paths for e in ("features", "words")]


def test_short_files_downmixes_and_empty_outputs_warn(tiny_hybrid, tiny_data, tmp_path,
                                                      monkeypatch, capsys):
    """0.05 s of audio: a keyed empty line and a warning (not a silent empty line); --channel
    mix says it downmixed; an input that gives no words says so."""
    path = sorted(read_table(os.path.join(tiny_data["test"], "wav.scp")).values())[0]
    x, sr = soundfile.read(path, dtype="float32")
    short, stereo = str(tmp_path / "short.wav"), str(tmp_path / "stereo.wav")
    soundfile.write(short, x[:800], sr)
    soundfile.write(stereo, np.stack([x, x], axis=1), sr, subtype="FLOAT")
    args = ["transcribe", "--acwt", "0.25", tiny_hybrid["model"], tiny_hybrid["graph"]]
    assert main(args + [short, stereo, "--channel", "mix"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0].strip() == short and lines[1].split(" ", 1)[0] == stereo
    assert f"transcribe: warning: {short}: 0.050 s of audio: too short for a word" in cap.err
    assert f"transcribe: warning: {stereo}: 2 channels downmixed to one" in cap.err
    from asrkd.recognizer import Recognizer

    monkeypatch.setattr(Recognizer, "decode_segment", lambda *a: [])
    assert main(args + [path]) == 0
    assert f"transcribe: warning: {path}: no words recognised" in capsys.readouterr().err
