"""Reading audio as Kaldi's tools see it: float32 samples in int16 range, one channel.

A file with more than one channel is refused unless the caller names a channel (``--channel
N``, as Kaldi's compute-*-feats) or a downmix (``--channel mix``: the mean of the channels), in
every verb that reads audio (compute-feats, transcribe); compute-feats records the choice in
DATA_DIR/channel, so later checks against the audio read it the same way.
"""

import numpy as np
import soundfile

from asrkd.errors import UserError


def read_audio(path, channel=None):
    """(samples float32 in int16 range, sample rate): Kaldi's view of the waveform.

    ``channel``: None (the file must have one channel), a channel index, or "mix" (the mean).
    """
    x, sr = soundfile.read(path, dtype="float32", always_2d=True)
    channels = x.shape[1]
    if channel is None and channels > 1:
        raise UserError(f"{path}: {channels} channels: name one with --channel N (0 to "
                        f"{channels - 1}) or downmix them with --channel mix")
    if channel == "mix":
        x = x.mean(axis=1, dtype=np.float32)
    else:
        c = parse_channel(0 if channel is None else channel)
        if c >= channels:
            raise UserError(f"{path}: no channel {c} (it has {channels})")
        x = np.ascontiguousarray(x[:, c])
    x *= np.float32(32768.0)
    return x, sr


def parse_channel(value):
    """--channel: None, "mix" or a channel index (int >= 0); UserError otherwise."""
    if value is None or value == "mix":
        return value
    try:
        c = int(value)
    except (TypeError, ValueError):
        c = -1
    if c < 0 or str(value).strip() != str(c):
        raise UserError(f"--channel {value!r}: give a channel index (0, 1, ...) or 'mix'")
    return c


def read_channel(d):
    """The --channel compute-feats was given for DataDir ``d`` (None if none)."""
    if not d.has("channel"):
        return None
    with open(d.file("channel")) as f:
        return parse_channel(f.read().strip())
