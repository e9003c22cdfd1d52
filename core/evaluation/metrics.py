"""Sample-quality metrics on features, each with its uncertainty: FID, KID, precision and recall.

Every function takes feature arrays (rows are images) of generated and reference images, so the same code
serves the domain feature net and Inception. Intervals are 95% percentile bootstraps over the *generated*
samples (the reference set is fixed); a comparison of two models resamples both with the same indices when
their samples share noise (``paired``), which is what makes a small difference detectable.

FID (Heusel et al. 2017):   ||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))
KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3
Precision / recall (Kynkaenniemi et al. 2019): a sample is "in" a set's manifold when it lies inside the
ball around some member of that set whose radius is the member's distance to its k-th nearest neighbour
in the set. Precision = share of generated samples inside the reference manifold; recall = share of
reference samples inside the generated manifold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

CONFIDENCE = 0.95
KID_MAX = 2000   # KID's Gram matrix of the generated samples is n x n: at most this many (the first ones)
PR_MAX = 5000    # likewise the k-NN distances of precision and recall


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


# -- KID ---------------------------------------------------------------------------------------------------
def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


class KidTerms:
    """The Gram matrices KID needs, computed once so that every bootstrap resample is only indexing."""

    def __init__(self, gen: np.ndarray, ref: np.ndarray):
        m = len(ref)
        k_rr = _kernel(ref, ref)
        self.ref_term = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
        self.k_gg = _kernel(gen, gen)
        self.k_gr_mean = _kernel(gen, ref).mean(1)

    def value(self, idx: Optional[np.ndarray] = None) -> float:
        """Unbiased MMD^2 of the generated samples ``idx`` (all when None) against the reference.
        Pairs of a sample with itself are left out, also when a resample repeats an index."""
        if idx is None:
            idx = np.arange(len(self.k_gg))
        n = len(idx)
        k = self.k_gg[np.ix_(idx, idx)]
        same = idx[:, None] == idx[None, :]
        gg = k[~same].sum() / max(1, (~same).sum())
        return float(gg + self.ref_term - 2 * self.k_gr_mean[idx].mean()) if n > 1 else float("nan")


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
    return {"precision": _coverage(gen, ref, _radii(ref, k)), "recall": _coverage(ref, gen, _radii(gen, k)),
            "k": k}


# -- intervals ---------------------------------------------------------------------------------------------
def _resamples(n: int, reps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def _interval(values: np.ndarray) -> list[float]:
    a = (1 - CONFIDENCE) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


def summarise(gen: np.ndarray, ref_stats: RefStats, ref_feats: np.ndarray, reps: int = 200, seed: int = 0,
              k: int = 3) -> dict:
    """FID and KID with 95% bootstrap intervals, precision and recall, of one model's sample features.
    Precision and recall use as many reference samples as there are generated ones (the first n)."""
    g_kid, g_pr = gen[:KID_MAX], gen[:PR_MAX]
    kt = KidTerms(g_kid, ref_feats)
    fids = np.array([fid(gen[i], ref_stats) for i in _resamples(len(gen), reps, seed)])
    kids = np.array([kt.value(i) for i in _resamples(len(g_kid), reps, seed)])
    return {"fid": fid(gen, ref_stats), "fid_ci": _interval(fids), "kid": kt.value(), "kid_ci": _interval(kids),
            **precision_recall(g_pr, ref_feats[:len(g_pr)], k), "bootstrap": reps, "confidence": CONFIDENCE}


def difference(a: np.ndarray, b: np.ndarray, ref_stats: RefStats, ref_feats: np.ndarray, metric: str,
               paired: bool, reps: int = 200, seed: int = 0) -> dict:
    """metric(a) - metric(b) with a 95% bootstrap interval; ``paired``: sample i of a and of b share their
    noise, so both are resampled with the same indices."""
    if metric == "kid":
        a, b = a[:KID_MAX], b[:KID_MAX]
    paired = paired and len(a) == len(b)
    one = _metric_fn(metric, ref_stats, ref_feats)
    fa, fb = one(a), one(b)
    ia = _resamples(len(a), reps, seed)
    ib = ia if paired else _resamples(len(b), reps, seed + 1)
    d = np.array([fa(i) - fb(j) for i, j in zip(ia, ib)])
    return {"metric": metric, "diff": fa(None) - fb(None), "ci": _interval(d), "paired": bool(paired)}


def _metric_fn(metric: str, ref_stats: RefStats, ref_feats: np.ndarray):
    if metric == "fid":
        return lambda g: (lambda i: fid(g if i is None else g[i], ref_stats))
    if metric == "kid":
        return lambda g: KidTerms(g, ref_feats).value
    raise ValueError(f"unknown metric {metric!r}")


def verdict(diff: dict) -> str:
    """'better' when the whole interval of a - b is below zero (lower is better for FID and KID), 'worse'
    when it is above, else 'no significant difference'."""
    lo, hi = diff["ci"]
    return "better" if hi < 0 else "worse" if lo > 0 else "no significant difference"
