"""Band-limited polyphase resampling in numpy (espeak's 22,050 Hz -> 16 kHz).

The same Hann-windowed sinc design as ``torchaudio.functional.resample`` (rolloff 0.99, 6
zero crossings), but the kernel is built once per rate pair and applied as one matrix product
over strided frames: torchaudio rebuilds it on every call, which cost more than synthesis itself.
"""

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@functools.lru_cache(maxsize=8)
def _kernel(orig, new, zero_crossings=6, rolloff=0.99):
    """(new, orig + 2W) polyphase kernel; row j produces output phase j of each frame."""
    cutoff = rolloff * min(orig, new) / orig  # in cycles per input sample, times 2
    width = math.ceil(zero_crossings / cutoff)
    m = np.arange(orig + 2 * width, dtype=np.float64)
    d = m[None, :] - width - (np.arange(new, dtype=np.float64) * orig / new)[:, None]
    d = np.clip(d, -width, width)
    window = np.cos(np.pi * d / (2 * width)) ** 2
    return cutoff * np.sinc(cutoff * d) * window, width


def resample(x, orig, new):
    """Resample a 1-D signal from ``orig`` to ``new`` Hz; output length ceil(len * new / orig)."""
    g = math.gcd(int(orig), int(new))
    orig, new = int(orig) // g, int(new) // g
    x = np.asarray(x, dtype=np.float64)
    if orig == new:
        return x.copy()
    kernel, width = _kernel(orig, new)
    out_len = -(-len(x) * new // orig)
    frames = -(-out_len // new)
    xpad = np.zeros((frames - 1) * orig + orig + 2 * width)
    xpad[width:width + len(x)] = x
    windows = sliding_window_view(xpad, orig + 2 * width)[::orig][:frames]  # (F, orig + 2W)
    return (windows @ kernel.T).reshape(-1)[:out_len]
