"""The ``other`` condition: reverberation and additive noise, drawn per utterance.

Simplifications (no image-source room model, no recorded noise): the room impulse response is
Gaussian noise under an exponential envelope whose decay reaches -60 dB at RT60, after a unit
direct path; noise is white, pink (1/f power, shaped in the frequency domain) or babble (a sum
of other espeak voices from a bank synthesised once per corpus), mixed at a drawn SNR measured
against the reverberant speech.
"""

from dataclasses import dataclass

import numpy as np

NOISE_KINDS = ("white", "pink", "babble")


@dataclass
class RoomConfig:
    rt60_min: float = 0.2
    rt60_max: float = 0.9
    snr_min: float = 5.0
    snr_max: float = 20.0
    babble_talkers_min: int = 3
    babble_talkers_max: int = 6


def synthetic_rir(rt60, sample_rate, rng):
    """Exponentially decaying noise RIR with a direct path at t=0, unit energy.

    Args:
        rt60: seconds until the envelope has fallen by 60 dB.
    Returns:
        float32 (L,), L = rt60 * sample_rate.
    """
    n = max(1, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    # amplitude envelope: 60 dB in energy over rt60 -> exp(-6.9078 t / rt60)
    env = np.exp(-3.0 * np.log(10.0) * t / rt60)
    rir = rng.standard_normal(n) * env * 0.3
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir ** 2))).astype(np.float32)


def fft_convolve(x, h):
    """Linear convolution by FFT, cut to len(x)."""
    n = len(x) + len(h) - 1
    nfft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)
    return y[: len(x)]


def pink_noise(n, rng):
    """Unit-variance 1/f-power noise."""
    m = n // 2 + 1
    spec = rng.standard_normal(m) + 1j * rng.standard_normal(m)  # white, drawn as a spectrum
    f = np.arange(m, dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / np.sqrt(f), n)
    return y / (np.std(y) + 1e-12)


def babble_noise(n, bank, rng, talkers):
    """Sum of ``talkers`` random segments of the babble bank (each tiled to length n)."""
    y = np.zeros(n)
    for _ in range(talkers):
        clip = bank[rng.integers(len(bank))]
        start = int(rng.integers(len(clip)))
        reps = -(-(start + n) // len(clip))
        y += np.tile(clip, reps)[start:start + n]
    return y / (np.std(y) + 1e-12)


def degrade(speech, sample_rate, rng, config=RoomConfig(), babble_bank=None):
    """Reverberate and add noise; returns (float64 audio, dict of the drawn parameters)."""
    rt60 = float(rng.uniform(config.rt60_min, config.rt60_max))
    snr = float(rng.uniform(config.snr_min, config.snr_max))
    kinds = NOISE_KINDS if babble_bank else NOISE_KINDS[:2]
    kind = kinds[int(rng.integers(len(kinds)))]
    y = fft_convolve(speech.astype(np.float64), synthetic_rir(rt60, sample_rate, rng))
    n = len(y)
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        noise = pink_noise(n, rng)
    else:
        talkers = int(rng.integers(config.babble_talkers_min, config.babble_talkers_max + 1))
        noise = babble_noise(n, babble_bank, rng, talkers)
    p_speech = np.mean(y ** 2) + 1e-12
    noise *= np.sqrt(p_speech / 10 ** (snr / 10))
    return y + noise, {"rt60": rt60, "snr": snr, "noise": kind}
