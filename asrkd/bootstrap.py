"""Speaker bootstrap: confidence intervals for frame accuracy, WER and their differences.

Test utterances of one speaker are not independent (same voice, same channel), so the unit that
is resampled is the speaker (Bisani & Ney 2004, "Bootstrap estimates for confidence intervals in
ASR performance evaluation"). A metric here is a ratio of per-speaker sums: frame accuracy =
correct frames / frames, WER = errors / reference words. One resample draws the test set's
speakers with replacement; every system is evaluated on the *same* draws, so a difference of two
systems (or a ratio of differences) gets a paired interval. Intervals are percentile intervals of
the resampled statistic; the draws come from a fixed seed, so the same inputs give the same
figures.
"""

import numpy as np

from asrkd.errors import UserError

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


class SpeakerBootstrap:
    """Resampling weights (B, S) over a fixed list of S speakers.

    ``weights[b, s]`` is how often speaker s is drawn in resample b (each row sums to S). The
    statistic of a system is ``weights @ num / weights @ den`` per resample, with ``num``/``den``
    its per-speaker sums (from :meth:`per_speaker`).
    """

    def __init__(self, speakers, resamples=DEFAULT_RESAMPLES, seed=DEFAULT_SEED):
        self.speakers = sorted(set(speakers))
        if not self.speakers:
            raise UserError("a bootstrap needs at least one speaker")
        if resamples < 1:
            raise UserError(f"resamples must be >= 1, got {resamples}")
        s = len(self.speakers)
        rng = np.random.default_rng(seed)
        self.weights = rng.multinomial(s, np.full(s, 1.0 / s), size=resamples).astype(np.float64)
        self._index = {spk: i for i, spk in enumerate(self.speakers)}

    def per_speaker(self, per_utt, utt2spk, what="system"):
        """Sum per-utterance (num, den) pairs by speaker -> (num (S,), den (S,)).

        Every utterance must have a speaker of this bootstrap; a speaker with no utterance in
        ``per_utt`` is a UserError (the systems compared would not share a test set).
        """
        num = np.zeros(len(self.speakers))
        den = np.zeros(len(self.speakers))
        for utt, (n, d) in per_utt.items():
            spk = utt2spk.get(utt)
            if spk not in self._index:
                raise UserError(f"{what}: utterance {utt} has no speaker of the test set")
            i = self._index[spk]
            num[i] += n
            den[i] += d
        missing = [s for s, d in zip(self.speakers, den) if d == 0]
        if missing:
            raise UserError(f"{what}: no scored utterance of speaker(s) "
                            f"{', '.join(missing[:5])}")
        return num, den

    def ratio(self, num, den, scale=100.0):
        """(point estimate, (B,) resampled values) of ``scale * sum(num) / sum(den)``."""
        point = scale * num.sum() / den.sum()
        return point, scale * (self.weights @ num) / (self.weights @ den)


def interval(samples, level=0.95):
    """Percentile interval (lo, hi) of resampled values (NaNs, from 0/0 draws, are dropped)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return None
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(x, [a, 1.0 - a])
    return float(lo), float(hi)


def excludes_zero(ci):
    """True when an interval lies entirely on one side of zero."""
    return ci is not None and (ci[0] > 0 or ci[1] < 0)
