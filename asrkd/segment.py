"""Cutting a long recording into segments for decoding, at low-energy frames.

A recording longer than ``max_frames`` is cut where the frame energy, smoothed over ``smooth``
frames (0.31 s: a long pause wins over a short one between words, and over one quiet frame
inside a word), is lowest within the last third of the limit, in the middle of the lowest run:
each segment is between 2/3 of the limit and the limit long, except the last, which is what
remains. The cuts are chosen online (``Segmenter.push`` as the feature chunks come), holding at
most a segment's energies.
"""

import numpy as np


def frame_energy(feats, config):
    """Per-frame log energy (T,) float64 of fbank features (T, D) of FbankConfig ``config``:
    the energy column where there is one, else the log of the summed mel energies."""
    x = np.asarray(feats, dtype=np.float64)
    if config.use_energy:
        return x[:, 0]
    if config.use_log_fbank:
        m = x.max(axis=1, keepdims=True)
        return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    return np.log(np.maximum(x.sum(axis=1), np.finfo(np.float64).tiny))


class Segmenter:
    """Segment ends (frame indices) of a recording whose frame energies come in chunks.

    ``push(energy)`` takes the next chunk's energies (t,); ``finish()`` returns the ends of all
    segments, the last being the number of frames: segment i is frames [ends[i-1], ends[i]).
    """

    def __init__(self, max_frames, smooth=31):
        self.max_frames = int(max_frames)
        self.search = max(1, self.max_frames // 3)
        self.smooth = smooth
        self.start, self.ends = 0, []
        self.buf = np.zeros(0)  # energies of frames start .. start + len(buf)

    def push(self, energy):
        self.buf = np.concatenate([self.buf, np.asarray(energy, dtype=np.float64)])
        while len(self.buf) > self.max_frames:
            cut = self._cut()
            self.ends.append(self.start + cut)
            self.start += cut
            self.buf = self.buf[cut:]

    def _cut(self):
        """The cut (in max_frames - search .. max_frames, from start): the middle of the latest
        run of frames at the lowest smoothed energy (a pause is cut in its middle)."""
        k = self.smooth
        e = self.buf[:self.max_frames + 1 + k // 2]
        smoothed = np.convolve(np.pad(e, k // 2, mode="edge"), np.ones(k) / k, mode="valid")
        lo = self.max_frames - self.search
        window = smoothed[lo:self.max_frames + 1]
        low = window <= window.min() + 1e-6
        last = len(window) - 1 - int(np.argmax(low[::-1]))
        first = last
        while first > 0 and low[first - 1]:
            first -= 1
        return max(1, lo + (first + last + 1) // 2)

    def finish(self):
        total = self.start + len(self.buf)
        return self.ends + ([total] if total > self.start or not self.ends else [])
