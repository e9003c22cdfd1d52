"""Sample-quality metrics on features, each with its uncertainty: FID, KID, precision and recall.

Every function takes feature arrays (rows are images) of generated and reference images, so the same code
serves the domain feature net and Inception.

Intervals (95%) are over the *generated* samples (the reference set is fixed), by **half-sampling**: the
metric of ``reps`` random halves of the samples (m = n/2, drawn without replacement: m-out-of-n subsampling,
whose rescaling factor sqrt(m / (n - m)) is 1 at m = n/2), and the 2.5% and 97.5% quantiles of their
deviations from their median, added to the estimate. FID is biased upward in n, so the interval is centred
on the estimate rather than on the halves (whose FID is higher): it holds the estimate, and it is an interval
for E[FID_n], the value FID at this n estimates and the one every comparison compares (always at equal n).
No resample repeats a sample: the percentile bootstrap used until issue 34 resampled with replacement, its
duplicates inflated FID, and near zero its intervals excluded their own estimates (covering E[FID_n] in
0-10% of sets of real digits). Coverage of each method measured: ``bench/interval_coverage.py``.

A comparison of two models (``difference``) half-samples both with the same indices when their samples share
noise (``paired``), which is what makes a small difference detectable, and independently otherwise; its
verdict is "better" / "worse" when the whole interval lies below / above zero.

FID (Heusel et al. 2017):   ||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))
KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3
Precision / recall (Kynkaenniemi et al. 2019): a sample is "in" a set's manifold when it lies inside the
ball around some member of that set whose radius is the member's distance to its k-th nearest neighbour
in the set. Precision = share of generated samples inside the reference manifold; recall = share of
reference samples inside the generated manifold.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from core.errors import UserError

CONFIDENCE = 0.95
KID_MAX = 2000  # KID's Gram matrix of the generated samples is n x n: at most this many (the first ones)
PR_MAX = 5000  # likewise the k-NN distances of precision and recall
INTERVAL = "half-sampling"  # how the intervals are made (the module docstring); written beside them


# -- FID ---------------------------------------------------------------------------------------------------
@dataclass
class RefStats:
    """The reference side of FID, prepared once: mean, covariance and its symmetric square root."""

    mu: np.ndarray
    sigma: np.ndarray
    sqrt_sigma: np.ndarray

    @classmethod
    def of(cls, mu: np.ndarray, sigma: np.ndarray) -> "RefStats":
        w, v = np.linalg.eigh(sigma)
        return cls(mu, sigma, (v * np.sqrt(np.clip(w, 0, None))) @ v.T)


def fid(gen: np.ndarray, ref: RefStats) -> float:
    """FID of generated features against reference statistics.

    tr (S_g S_r)^(1/2) = sum_i sqrt(lambda_i), lambda the eigenvalues of S_r^(1/2) S_g S_r^(1/2) (d x d), or,
    with S_g = X^T X / (n - 1) for centred X and n <= d, of X S_r X^T / (n - 1) (n x n): the same non-zero
    eigenvalues, so a bootstrap of a few hundred samples of 2048-d features costs n x n, not d x d."""
    n = len(gen)
    mu = gen.mean(0)
    xc = gen - mu
    if n <= gen.shape[1]:
        m = (xc @ ref.sigma @ xc.T) / (n - 1)
    else:
        s = ref.sqrt_sigma
        m = s @ (xc.T @ xc / (n - 1)) @ s
    lam = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
    trace_g = float((xc * xc).sum() / (n - 1))
    return float(((mu - ref.mu) ** 2).sum() + trace_g + np.trace(ref.sigma) - 2 * np.sqrt(lam).sum())


def fid_between(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two sets of features, ``b`` taken as the reference (its mean and covariance)."""
    if len(a) < 2 or len(b) < 2:
        raise UserError("FID needs at least 2 samples on each side")
    return fid(a, RefStats.of(b.mean(0), np.cov(b, rowvar=False)))


class _FidRows:
    """FID of any rows of ``gen`` (the same value as ``fid(gen[idx], ref)``), for many resamples: ``gen`` is
    whitened by the reference's square root once (Z = X S_r^(1/2)), so that S_r^(1/2) S_g S_r^(1/2) is the
    covariance of Z, and a resample costs one Gram matrix of its rows and one eigenproblem."""

    def __init__(self, gen: np.ndarray, ref: RefStats):
        self.x, self.z, self.ref = gen, gen @ ref.sqrt_sigma, ref
        self.tr_r = float(np.trace(ref.sigma))

    def __call__(self, idx: Optional[np.ndarray] = None) -> float:
        x, z = (self.x, self.z) if idx is None else (self.x[idx], self.z[idx])
        n = len(x)
        mu = x.mean(0)
        xc, zc = x - mu, z - z.mean(0)
        g = zc.T @ zc if n > zc.shape[1] else zc @ zc.T
        lam = np.clip(np.linalg.eigvalsh((g + g.T) / (2 * (n - 1))), 0, None)
        return float(((mu - self.ref.mu) ** 2).sum() + (xc * xc).sum() / (n - 1) + self.tr_r - 2 * np.sqrt(lam).sum())


# -- KID ---------------------------------------------------------------------------------------------------
def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


_REF_TERMS: list[tuple[np.ndarray, float]] = []  # (reference features, their term): the last few, by identity


def _ref_term(ref: np.ndarray) -> float:
    """The reference's own KID term, mean k(r_i, r_j) over i != j: an m x m Gram matrix (m = 5,000 digits: 200 MB,
    about a second), the same for every model and resample scored against one reference, so computed once."""
    for arr, term in _REF_TERMS:
        if arr is ref:
            return term
    m = len(ref)
    k_rr = _kernel(ref, ref)
    term = float((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)))
    _REF_TERMS[:] = [*_REF_TERMS[-3:], (ref, term)]
    return term


class KidTerms:
    """The Gram matrices KID needs, computed once so that every bootstrap resample is only indexing."""

    def __init__(self, gen: np.ndarray, ref: np.ndarray):
        self.ref_term = _ref_term(ref)
        self.k_gg = _kernel(gen, gen)
        self.k_gr_mean = _kernel(gen, ref).mean(1)

    def value(self, idx: Optional[np.ndarray] = None) -> float:
        """Unbiased MMD^2 of the generated samples ``idx`` (all when None) against the reference.
        Pairs of a sample with itself are left out, also when a resample repeats an index: with w_i the times
        sample i is drawn, the generated term is (w'Kw - sum_i w_i^2 K_ii) / (n^2 - sum_i w_i^2)."""
        if idx is None:
            w = np.ones(len(self.k_gg))
        else:
            w = np.bincount(np.asarray(idx), minlength=len(self.k_gg)).astype(np.float64)
        n, w2 = w.sum(), w * w
        if n < 2:
            return float("nan")
        gg = (w @ self.k_gg @ w - w2 @ np.diagonal(self.k_gg)) / max(1.0, n * n - w2.sum())
        return float(gg + self.ref_term - 2 * (w @ self.k_gr_mean) / n)


def kid(gen: np.ndarray, ref: np.ndarray) -> float:
    return KidTerms(gen, ref).value()


# -- precision and recall --------------------------------------------------------------------------------
def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.clip(d, 0, None)


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of every row to its k-th nearest other row."""
    d = _sq_dists(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` inside at least one ball (centre, radius)."""
    inside = _sq_dists(points, centres) <= radii[None, :]
    return float(inside.any(1).mean())


def precision_recall(gen: np.ndarray, ref: np.ndarray, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaenniemi et al. 2019) with k-NN manifolds; use equal set sizes."""
    if min(len(gen), len(ref)) <= k:
        return {"precision": None, "recall": None, "k": k}
    return {"precision": _coverage(gen, ref, _radii(ref, k)), "recall": _coverage(ref, gen, _radii(gen, k)), "k": k}


# -- intervals ---------------------------------------------------------------------------------------------
def _half(n: int) -> int:
    """The half-sample size: n // 2, at least 2 (FID and KID need 2 samples), at most n."""
    return n // 2 if n >= 4 else min(n, 2)


def _subsets(n: int, reps: int, seed: int) -> np.ndarray:
    """``reps`` half-samples of range(n), rows of m = ``_half(n)`` indices drawn without replacement; every one
    of the C(n, m) half-samples once when there are at most ``reps`` of them (a small case is exact)."""
    m = _half(n)
    if n <= 12 and math.comb(n, m) <= reps:
        return np.array(list(itertools.combinations(range(n), m)), dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n)[:m] for _ in range(reps)])


def _scale(n: int) -> float:
    """sqrt(m / (n - m)): the spread of a mean over half-samples of m without replacement, sqrt(1/m - 1/n),
    rescaled to that of a mean over n, sqrt(1/n); 1 for even n, 0 when the half-sample is the whole set."""
    m = _half(n)
    return math.sqrt(m / (n - m)) if m < n else 0.0


def _centred(est: float, dev: np.ndarray, floor: Optional[float] = None) -> list[float]:
    """``est`` plus the 2.5% and 97.5% quantiles of the replicates' deviations ``dev`` about their median
    (lower end at least ``floor``): an interval that holds ``est``."""
    a = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(dev - np.median(dev), [a, 1 - a])
    lo = est + lo if floor is None else min(est, max(floor, est + lo))
    return [float(lo), float(est + hi)]


def summarise(
    gen: np.ndarray, ref_stats: RefStats, ref_feats: np.ndarray, reps: int = 200, seed: int = 0, k: int = 3
) -> dict:
    """FID and KID with 95% half-sampling intervals (the module docstring), precision and recall, of one
    model's sample features. ``fid`` is the plain FID of all n samples; ``fid_ci`` is an interval for E[FID_n]
    (its lower end at least 0). Precision and recall use as many reference samples as there are generated
    ones (the first n)."""
    g_kid, g_pr = gen[:KID_MAX], gen[:PR_MAX]
    kt, fr = KidTerms(g_kid, ref_feats), _FidRows(gen, ref_stats)
    f, kv = fid(gen, ref_stats), kt.value()
    fids = np.array([fr(i) for i in _subsets(len(gen), reps, seed)])
    kids = np.array([kt.value(i) for i in _subsets(len(g_kid), reps, seed)])
    return {
        "fid": f,
        "fid_ci": _centred(f, _scale(len(gen)) * fids, floor=0.0),
        "kid": kv,
        "kid_ci": _centred(kv, _scale(len(g_kid)) * kids),
        **precision_recall(g_pr, ref_feats[: len(g_pr)], k),
        "bootstrap": reps,
        "interval": INTERVAL,
        "confidence": CONFIDENCE,
    }


def difference(
    a: np.ndarray,
    b: np.ndarray,
    ref_stats: RefStats,
    ref_feats: np.ndarray,
    metric: str,
    paired: bool,
    reps: int = 200,
    seed: int = 0,
) -> dict:
    """metric(a) - metric(b) with a 95% half-sampling interval; ``paired``: sample i of a and of b share their
    noise, so both are half-sampled with the same indices (else independently)."""
    if metric == "kid":
        a, b = a[:KID_MAX], b[:KID_MAX]
    paired = paired and len(a) == len(b)
    one = _metric_fn(metric, ref_stats, ref_feats)
    fa, fb = one(a), one(b)
    ia = _subsets(len(a), reps, seed)
    ib = ia if paired else _subsets(len(b), reps, seed + 1)
    sa, sb = _scale(len(a)), _scale(len(b))
    d = np.array([sa * fa(i) - sb * fb(j) for i, j in zip(ia, ib)])
    diff = fa(None) - fb(None)
    return {"metric": metric, "diff": diff, "ci": _centred(diff, d), "paired": bool(paired)}


def _metric_fn(metric: str, ref_stats: RefStats, ref_feats: np.ndarray):
    if metric == "fid":
        return lambda g: _FidRows(g, ref_stats)
    if metric == "kid":
        return lambda g: KidTerms(g, ref_feats).value
    raise ValueError(f"unknown metric {metric!r}")


def verdict(diff: dict) -> str:
    """'better' when the whole interval of a - b is below zero (lower is better for FID and KID), 'worse'
    when it is above, else 'no significant difference'."""
    lo, hi = diff["ci"]
    return "better" if hi < 0 else "worse" if lo > 0 else "no significant difference"
