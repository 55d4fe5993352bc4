"""stream: features of a file read in blocks are those of the whole file (resampled or not,
snip_edges or not); segment: cuts at the quietest stretch within the last third of the limit."""

import contextlib
import dataclasses

import numpy as np
import pytest
import soundfile

from asrkd.audio import audio_blocks, read_audio
from asrkd.errors import UserError
from asrkd.featconf import FbankConfig
from asrkd.features import make_extractor, resample
from asrkd.segment import Segmenter
from asrkd.stream import file_features, resample_blocks


def _speechlike(n, sr, seed=0):
    """Noise bursts under a slow envelope with silent stretches: (n,) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    env = np.clip(np.sin(np.arange(n) / sr * 2.3), 0, None) ** 2
    return (0.2 * env * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 22050, 8000])
@pytest.mark.parametrize("snip_edges", [True, False])
def test_block_features_are_the_whole_files(tmp_path, rate, snip_edges):
    """At the features' rate the frames are bit-identical across 0.37 s and 1 s blocks (16-bit
    samples are integers, so the frame sums are exact whatever the block), after
    resampling they differ by float32 rounding of the resampler's sums (a few 1e-5 on log-mels
    of ~10, up to 2e-4 in the empty band above 4 kHz of 8 kHz audio). One block: identical."""
    path = str(tmp_path / "a.wav")
    soundfile.write(path, _speechlike(int(7.3 * rate), rate), rate, subtype="PCM_16")
    conf = dataclasses.replace(FbankConfig(), snip_edges=snip_edges)
    extract = make_extractor(conf)
    w, _ = read_audio(path)
    ref = extract(resample(w, rate, conf.sample_rate) if rate != conf.sample_rate else w)
    across = 0.0 if rate == conf.sample_rate else 1e-3
    for block_s, atol in ((0.37, across), (1.0, across), (8.0, 0.0)):
        seconds, chunks = file_features(path, conf, extract, block_s=block_s)
        chunks = list(chunks)
        got = np.concatenate(chunks)
        assert abs(seconds - 7.3) < 1e-3 and got.shape == ref.shape
        assert len(chunks) == int(np.ceil(7.3 / block_s))
        assert np.abs(got - ref).max() <= atol
    with pytest.raises(UserError, match="drop --no-resample") if rate != 16000 else contextlib.nullcontext():
        file_features(path, conf, extract, resample_ok=False)


def test_resample_blocks_match_one_call():
    x = (_speechlike(44100 * 3, 44100, seed=1) * 32768).astype(np.float32)
    ref = resample(x, 44100, 16000)
    blocks = (x[i:i + 5000] for i in range(0, len(x), 5000))
    got = np.concatenate(list(resample_blocks(blocks, 44100, 16000)))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def test_blocks_apply_the_channel_rule(tmp_path):
    path = str(tmp_path / "st.wav")
    x = _speechlike(16000, 16000)
    soundfile.write(path, np.stack([x, 0.5 * x], axis=1), 16000, subtype="FLOAT")
    with pytest.raises(UserError, match="2 channels"):
        audio_blocks(path)
    for channel in (1, "mix"):
        ref, _ = read_audio(path, channel)
        sr, n, blocks = audio_blocks(path, channel, block_s=0.3)
        assert (sr, n) == (16000, 16000)
        assert np.array_equal(np.concatenate(list(blocks)), ref)
    with pytest.raises(UserError, match="no channel 2"):
        audio_blocks(path, 2)


def test_segmenter_cuts_in_the_middle_of_the_quietest_pause():
    """Speech (energy 20) with a short pause (5 frames at 0) inside the search window and a long
    one (60 frames at 0) further on: the cut is the long pause's middle; no segment is longer
    than the limit or (but the last) shorter than 2/3 of it."""
    e = np.full(1000, 20.0)
    e[700:705] = 0.0
    e[760:820] = 0.0
    seg = Segmenter(max_frames=900)
    for i in range(0, len(e), 128):
        seg.push(e[i:i + 128])
    ends = seg.finish()
    assert ends == [790, 1000]
    rng = np.random.default_rng(3)
    seg = Segmenter(max_frames=300)
    seg.push(rng.normal(10, 3, 5000))
    ends = seg.finish()
    lengths = np.diff([0] + ends)
    assert ends[-1] == 5000 and lengths.max() <= 300 and lengths[:-1].min() >= 200
    short = Segmenter(max_frames=300)
    short.push(np.zeros(300))
    assert short.finish() == [300]
