"""Features of a long recording block by block: audio -> resampled audio -> fbank frames.

``file_features(path, config, extract, ...)`` yields a file's features as successive float32
(t, D) chunks computed from blocks of ``block_s`` seconds of audio, so that memory does not grow
with the length of the file. Each stage carries across blocks exactly what its next output
needs:

- resampling (asrkd.features.resample, a windowed sinc) runs on whole periods of the rate ratio
  with ``resample_width`` input samples of context each side, rounded up to whole periods, and
  keeps only the outputs whose window lies inside the block;
- framing keeps the samples after the last whole frame (with snip_edges, a frame is ``size``
  samples every ``shift``: the next block's frames start there);
- configs the torch extractor hands to kaldi-native-fbank (dither, snip_edges: false) are fed
  to its online extractor, which carries its own state.

A file of one block (at most ``block_s`` seconds) is computed exactly as by one call on the
whole file, bit for bit. Across blocks every frame sees the same samples; the sums inside the
extractor (float64 cumulative sums, FFT and mel matmul over other batch sizes) may round
differently: tests/test_stream.py measures the difference (within float32 rounding).
"""

import math

import numpy as np

from asrkd.audio import audio_blocks
from asrkd.errors import UserError
from asrkd.features import resample, resample_width


def _with_last(blocks):
    """(block, is_last) for each block of an iterator (one block of look-ahead)."""
    it = iter(blocks)
    try:
        prev = next(it)
    except StopIteration:
        return
    for b in it:
        yield prev, False
        prev = b
    yield prev, True


def resample_blocks(blocks, orig_rate, new_rate):
    """Blocks of samples at ``orig_rate`` -> blocks at ``new_rate``: together the samples of
    ``resample`` on the concatenation (to float32 rounding; exactly for a single block)."""
    g = math.gcd(int(orig_rate), int(new_rate))
    period, out_period = int(orig_rate) // g, int(new_rate) // g
    context = period * math.ceil((resample_width(orig_rate, new_rate) + period) / period)
    hist = np.zeros(0, dtype=np.float32)  # input before ``pending``, at most ``context``
    pending = np.zeros(0, dtype=np.float32)
    for block, last in _with_last(blocks):
        pending = np.concatenate([pending, block])
        # whole periods whose every output has its right context in ``pending``
        n = len(pending) if last else (len(pending) - context) // period * period
        if n <= 0:
            continue
        upto = len(pending) if last else n + context
        y = resample(np.concatenate([hist, pending[:upto]]), orig_rate, new_rate)
        skip = len(hist) // period * out_period
        yield y[skip:] if last else y[skip:skip + n // period * out_period]
        hist = np.concatenate([hist, pending[:n]])[-context:]
        pending = pending[n:]


def frame_blocks(blocks, extract, config):
    """Blocks of samples -> float32 (t, D) feature chunks of ``extract`` (asrkd.features'
    torch extractor for ``config``): together the frames of ``extract`` on the concatenation."""
    online = getattr(extract, "fallback", None)
    if online is not None:  # dither or snip_edges: false: Kaldi's own online code
        yield from _online_blocks(blocks, online, config)
        return
    if not config.snip_edges:
        raise UserError("snip_edges: false needs the extractor's online fallback")
    shift, size = extract.shift, extract.size
    rest = np.zeros(0, dtype=np.float32)
    for block in blocks:
        w = np.concatenate([rest, block]) if len(rest) else block
        n = 0 if len(w) < size else 1 + (len(w) - size) // shift
        if n:
            yield extract(np.ascontiguousarray(w, dtype=np.float32))
        rest = w[n * shift:]


def _online_blocks(blocks, knf_extractor, config):
    f, done = knf_extractor.online(), 0
    for block, last in _with_last(blocks):
        f.accept_waveform(config.sample_rate, block)
        if last:
            f.input_finished()
        n = f.num_frames_ready
        if n > done:
            yield np.stack([f.get_frame(i) for i in range(done, n)]).astype(np.float32)
            done = n


def file_features(path, config, extract, channel=None, resample_ok=True, block_s=30.0,
                  on_resample=None, on_downmix=None):
    """(duration in seconds, iterator of float32 (t, D) feature chunks) of audio file ``path``
    read ``block_s`` seconds at a time, resampled to ``config.sample_rate`` if it differs (an
    error if not ``resample_ok``; ``on_resample(sr)`` is called first; ``on_downmix``: see
    asrkd.audio.audio_blocks)."""
    sr, n, blocks = audio_blocks(path, channel, block_s, on_downmix)
    if sr != config.sample_rate:
        if not resample_ok:
            raise UserError(f"{path}: sample rate {sr} Hz, the model's features are at "
                            f"{config.sample_rate} Hz (drop --no-resample to resample)")
        if on_resample is not None:
            on_resample(sr)
        blocks = resample_blocks(blocks, sr, config.sample_rate)
    return n / sr, frame_blocks(blocks, extract, config)
