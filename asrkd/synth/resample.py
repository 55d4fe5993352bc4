"""Band-limited polyphase resampling in numpy (espeak's 22,050 Hz -> 16 kHz).

The same Hann-windowed sinc design as ``torchaudio.functional.resample`` (rolloff 0.99, 6
zero crossings), built once per rate pair. Each output phase needs only its ~20 non-zero taps,
so the filter runs as ~20 vectorised multiply-adds instead of torchaudio's dense convolution
(which rebuilt the kernel on every call and cost more than synthesis) or a BLAS product (whose
threads slow to a crawl on a loaded machine). No BLAS also means results do not depend on
thread counts.
"""

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=8)
def _taps(orig, new, zero_crossings=6, rolloff=0.99):
    """Start offsets (new,) and taps (new, K) of each output phase, in input samples."""
    cutoff = rolloff * min(orig, new) / orig  # in cycles per input sample, times 2
    width = math.ceil(zero_crossings / cutoff)
    t = np.arange(new, dtype=np.float64) * orig / new  # phase j sits at input time t_j
    start = np.floor(t).astype(np.int64) - width
    k = np.arange(2 * width + 2, dtype=np.float64)
    d = np.clip(start[:, None] + k[None, :] - t[:, None], -width, width)
    taps = cutoff * np.sinc(cutoff * d) * np.cos(np.pi * d / (2 * width)) ** 2
    return start, taps, width


def resample(x, orig, new):
    """Resample a 1-D signal from ``orig`` to ``new`` Hz; output length ceil(len * new / orig)."""
    g = math.gcd(int(orig), int(new))
    orig, new = int(orig) // g, int(new) // g
    x = np.asarray(x, dtype=np.float64)
    if orig == new:
        return x.copy()
    start, taps, width = _taps(orig, new)
    out_len = -(-len(x) * new // orig)
    frames = -(-out_len // new)
    xpad = np.zeros(frames * orig + 2 * width + 2)
    xpad[width:width + len(x)] = x
    base = (np.arange(frames) * orig)[:, None] + (start + width)[None, :]  # (F, new)
    y = np.zeros(base.shape)
    for k in range(taps.shape[1]):
        y += xpad[base + k] * taps[:, k]
    return y.reshape(-1)[:out_len]
