import numpy as np
import pytest

from asrkd.bootstrap import SpeakerBootstrap, excludes_zero, interval
from asrkd.errors import UserError


def test_two_speakers_known_distribution():
    # speaker a: 0 of 10 frames right, b: 10 of 10. A resample holds a twice (0 %), b twice
    # (100 %) or one of each (50 %), with probabilities 1/4, 1/4, 1/2.
    boot = SpeakerBootstrap(["a", "b"], resamples=8000, seed=1)
    num, den = boot.per_speaker({"a-1": (0, 4), "a-2": (0, 6), "b-1": (10, 10)},
                                {"a-1": "a", "a-2": "a", "b-1": "b"})
    assert num.tolist() == [0, 10] and den.tolist() == [10, 10]
    point, draws = boot.ratio(num, den)
    assert point == 50.0
    values, counts = np.unique(draws, return_counts=True)
    assert values.tolist() == [0.0, 50.0, 100.0]
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.02)
    assert interval(draws) == (0.0, 100.0)


def test_spread_matches_the_standard_error_of_a_mean():
    # equal frames per speaker: the statistic is a mean of S per-speaker rates, whose bootstrap
    # standard deviation is the population std / sqrt(S)
    rng = np.random.default_rng(0)
    s = 60
    rates = rng.uniform(0.2, 0.8, s)
    spk = [f"s{i}" for i in range(s)]
    boot = SpeakerBootstrap(spk, resamples=4000)
    num, den = boot.per_speaker({f"s{i}-u": (rates[i] * 1000, 1000) for i in range(s)},
                                {f"s{i}-u": f"s{i}" for i in range(s)})
    _, draws = boot.ratio(num, den, scale=1.0)
    assert draws.std() == pytest.approx(rates.std() / np.sqrt(s), rel=0.07)
    lo, hi = interval(draws)
    assert lo < rates.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * rates.std() / np.sqrt(s), rel=0.1)


def test_paired_difference_is_exact_when_one_system_is_the_other_shifted():
    # system b gets 5 more frames right out of 100 on every speaker: its difference with a is
    # +5 points on every draw, although each system alone has a wide interval
    rng = np.random.default_rng(2)
    s = 12
    base = rng.integers(20, 80, s)
    u2s = {f"s{i}-u": f"s{i}" for i in range(s)}
    boot = SpeakerBootstrap(u2s.values(), resamples=1000)
    a = boot.ratio(*boot.per_speaker({f"s{i}-u": (base[i], 100) for i in range(s)}, u2s))[1]
    b = boot.ratio(*boot.per_speaker({f"s{i}-u": (base[i] + 5, 100) for i in range(s)}, u2s))[1]
    lo, hi = interval(a)
    assert hi - lo > 10
    assert interval(b - a) == pytest.approx((5.0, 5.0))
    assert excludes_zero(interval(b - a)) and not excludes_zero((-1.0, 2.0))


def test_fixed_seed_same_figures_and_bad_inputs():
    u2s = {"x-1": "x", "y-1": "y", "z-1": "z"}
    per = {"x-1": (3, 10), "y-1": (5, 10), "z-1": (9, 10)}
    a = SpeakerBootstrap(u2s.values(), resamples=500)
    b = SpeakerBootstrap(u2s.values(), resamples=500)
    assert np.array_equal(a.ratio(*a.per_speaker(per, u2s))[1], b.ratio(*b.per_speaker(per, u2s))[1])
    with pytest.raises(UserError, match="no speaker"):
        a.per_speaker({"w-1": (1, 2)}, {"w-1": "w"})
    with pytest.raises(UserError, match="speaker"):
        a.per_speaker({"x-1": (1, 2)}, u2s)  # y and z unscored: not the same test set
    with pytest.raises(UserError):
        SpeakerBootstrap([])
