"""Sample-quality metrics: FID and KID agree with clean-fid, precision/recall match a case worked by hand,
and every interval narrows as the sample count grows."""
import numpy as np
import pytest
from cleanfid.fid import frechet_distance, kernel_distance

from core.evaluation import metrics as M


def _feats(n, d, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, d))


@pytest.mark.parametrize("n", [40, 300])  # fewer and more samples than dimensions
def test_fid_equals_clean_fid(n):
    ref, gen = _feats(2000, 64, seed=1), _feats(n, 64, shift=0.3, seed=2)
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    expected = frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), mu, sigma)
    assert M.fid(gen, M.RefStats.of(mu, sigma)) == pytest.approx(expected, rel=1e-6)


def test_kid_equals_clean_fid_on_equal_sets():
    ref, gen = _feats(200, 32, seed=3), _feats(200, 32, shift=0.2, seed=4)
    assert M.kid(gen, ref) == pytest.approx(kernel_distance(gen, ref, num_subsets=3), rel=1e-9)


def test_precision_recall_worked_case():
    ref = np.arange(10, dtype=float)[:, None]         # 0..9; k = 1 radius of each is 1
    gen = np.array([[0.5], [20.0]])                   # one inside the reference manifold, one far out
    pr = M.precision_recall(gen, ref, k=1)
    assert pr["precision"] == 0.5                     # only 0.5 lies in a reference ball
    assert pr["recall"] == 1.0                        # the generated radius (19.5) covers all of 0..9
    assert M.precision_recall(ref, ref, k=3)["precision"] == 1.0


def test_identical_sets_have_perfect_precision_and_recall():
    x = _feats(100, 8, seed=5)
    assert M.precision_recall(x, x) == {"precision": 1.0, "recall": 1.0, "k": 3}


def test_intervals_shrink_as_n_grows():
    ref = _feats(3000, 16, seed=6)
    stats = M.RefStats.of(ref.mean(0), np.cov(ref, rowvar=False))
    width = {}
    for n in (100, 1000):
        s = M.summarise(_feats(n, 16, shift=0.2, seed=7), stats, ref, reps=100)
        width[n] = {m: s[f"{m}_ci"][1] - s[f"{m}_ci"][0] for m in ("fid", "kid")}
        assert s["kid_ci"][0] <= s["kid"] <= s["kid_ci"][1]
    assert width[1000]["fid"] < width[100]["fid"] / 2
    assert width[1000]["kid"] < width[100]["kid"] / 2


def test_verdict_of_a_paired_difference():
    ref = _feats(2000, 16, seed=8)
    stats = M.RefStats.of(ref.mean(0), np.cov(ref, rowvar=False))
    good, bad = _feats(400, 16, shift=0.0, seed=9), _feats(400, 16, shift=0.5, seed=9)
    for metric in ("fid", "kid"):
        assert M.verdict(M.difference(good, bad, stats, ref, metric, paired=True, reps=100)) == "better"
        assert M.verdict(M.difference(bad, good, stats, ref, metric, paired=True, reps=100)) == "worse"
        same = M.difference(good, good.copy(), stats, ref, metric, paired=True, reps=100)
        assert same["diff"] == 0 and M.verdict(same) == "no significant difference"
