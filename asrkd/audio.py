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
    return _one_channel(x, x.shape[1], path, channel), sr


def audio_blocks(path, channel=None, block_s=30.0, on_downmix=None):
    """(sample rate, number of samples, iterator of float32 blocks in int16 range): read_audio's
    samples, read ``block_s`` seconds at a time (the last block shorter) so that a long file is
    never whole in memory. The channel rule is read_audio's, checked before any block is read;
    an unreadable file is a UserError. ``on_downmix(channels)`` is called first where
    ``channel`` "mix" averages more than one channel."""
    try:
        info = soundfile.info(path)
    except RuntimeError as e:  # soundfile: unreadable or unknown format
        raise UserError(f"{path}: cannot read audio ({e})") from None
    _one_channel(np.zeros((0, info.channels), dtype=np.float32), info.channels, path, channel)
    if channel == "mix" and info.channels > 1 and on_downmix is not None:
        on_downmix(info.channels)
    block = max(1, int(round(block_s * info.samplerate)))

    def blocks():
        try:
            with soundfile.SoundFile(path) as f:
                while True:
                    x = f.read(block, dtype="float32", always_2d=True)
                    if len(x) == 0:
                        return
                    yield _one_channel(x, info.channels, path, channel)
        except RuntimeError as e:
            raise UserError(f"{path}: cannot read audio ({e})") from None

    return info.samplerate, info.frames, blocks()


def _one_channel(x, channels, path, channel):
    """(N, channels) float32 in [-1, 1] -> (N,) float32 in int16 range, by the channel rule."""
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
    return x


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
