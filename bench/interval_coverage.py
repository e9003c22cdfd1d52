"""Do the 95% intervals of FID and KID cover what they claim to, and how often does a verdict say "better" or
"worse" about two samples of one distribution? (issue 34)

Real digits stand in for a model's samples, so the truth is known. The 5000 bundled digits (preset ``tiny``)
go through the shipped domain feature net once and are split in two halves by a fixed permutation: the
**reference** (its mean and covariance as ``metrics.RefStats``, its features for KID) and the **pool** (2500).
Two distributions are drawn from the pool:

* ``real digits``: the pool itself. Its FID against the reference is near zero: the boundary case, where
  the percentile bootstrap's intervals excluded their own estimates;
* ``speckle 3%``: the pool with 3% of its background speckled (``perturb.speckle``), a clearly positive FID
  (about the size of the tiny models' FIDs).

Targets, stated explicitly (FID is biased in n, so "the true FID" is not one number):

* ``E[FID_n]``: the mean FID over many independent sets of n from the pool (``--draws`` sets plus the trial
  sets). What FID at n estimates, and what every comparison here compares (always at equal n).
* ``FID_2500``: the FID of the whole pool, the value at a large reference n.
* ``FID_inf``: the pool's FID extrapolated to 1/n -> 0 (Chong & Forsyth, CVPR 2020: FID at 9 subset sizes
  from 500 to 2500, a straight line in 1/m, its intercept): the bias-free value.

KID is unbiased, so its three targets nearly coincide.

For each n, ``--trials`` trials each take a random permutation of the pool and two disjoint sets of n digits,
D1 and D2. The sets clean D1, clean D2, speckle-3% D1, speckle-3% D2 get every interval method (coverage);
speckle 1% of D1 (two speckle seeds) serves the verdicts. Interval methods, all nominally 95%, all with
``--reps`` resamples (as ``eval.bootstrap``):

* ``percentile``: the shipped method up to this issue: resample n with replacement, 2.5/97.5% quantiles;
* ``basic``: the same replicates reflected about the estimate, 2 est - q (corrects the bootstrap's bias);
* ``BC``: Efron's bias-corrected percentile interval; undefined when no replicate falls below the estimate;
* ``recentred percentile``: the percentile interval moved so that the replicates' median sits on the estimate;
* ``half-sampling`` (what ``metrics`` ships since issue 34): subsets of n/2 without replacement (m-out-of-n
  subsampling with m = n/2: the rescaling factor sqrt(m / (n - m)) is 1), the 2.5/97.5% quantiles of their
  deviation from their median, added to the estimate;
* ``extrapolated (C&F)``: FID at n/4, n/2 (the half-samples' mean), 3n/4 and n, a line in 1/m, its intercept;
  the half-samples' deviations around it (FID only);
* ``4 disjoint quarters``: the estimate +- t(3) sd(quarters) / 2 (intervals over disjoint sample sets).

The pool is finite (2500), so sets of n drawn from it vary less than sets from an unlimited population, by
sqrt(1 - n/2500) for a mean (0.77 at n = 1024): every interval would look conservative at large n. Coverage is
therefore reported with each interval's half-width scaled by that factor about its midpoint ("FPC", as if the
sets came from an unlimited population); the JSON also holds the raw coverage.

Verdicts (``metrics.verdict`` of a difference interval made by the percentile bootstrap as before, by the
recentred percentile, and by half-sampling as ``metrics.difference`` ships it):
false positives on pairs of one distribution, unpaired (clean D1 vs clean D2; speckle-3% D1 vs D2: disjoint
digits, like two evaluations of one model with other noise) and paired (speckle 1% of D1 with two speckle
seeds: same digits, like two equally good models sharing their noise); power against 1% speckle, paired
(speckle-1% D1 vs clean D1) and unpaired (speckle-1% D1 vs clean D2).

    OMP_NUM_THREADS=1 python bench/interval_coverage.py [--trials 25] [--reps 200] [--ns 256,512,1024]
    python bench/interval_coverage.py --render     # the .md again from the .json
    OMP_NUM_THREADS=1 python bench/interval_coverage.py --nulls [--null-trials 40]   # more null pairs

Writes bench/results/interval_coverage.json and .md (``--nulls``: interval_coverage_nulls.json and .md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import config as C  # noqa: E402
from core.evaluation import features as F  # noqa: E402
from core.evaluation import metrics as M  # noqa: E402
from core.evaluation.perturb import speckle  # noqa: E402
from core.training.data import load_dataset  # noqa: E402

T3 = 3.182446305284263  # t quantile 0.975 with 3 degrees of freedom (4 disjoint quarters)
Z = NormalDist()
FID_METHODS = (
    "percentile",
    "basic",
    "BC",
    "recentred percentile",
    "half-sampling",
    "extrapolated (C&F)",
    "4 disjoint quarters",
)
KID_METHODS = ("percentile", "basic", "BC", "recentred percentile", "half-sampling", "4 disjoint quarters")
DIFF_METHODS = ("percentile", "recentred percentile", "half-sampling")


# -- the metrics on a fixed pool, fast --------------------------------------------------------------------
class FidPool:
    """FID of any rows of a pool of features against fixed reference statistics: ``metrics.fid``'s formula
    with the pool whitened by the reference's square root once (Z = X S_r^(1/2)), so each set costs one Gram
    matrix and one eigenproblem (checked equal to ``metrics.fid``)."""

    def __init__(self, x: np.ndarray, ref: M.RefStats):
        self.x, self.z, self.ref = x, x @ ref.sqrt_sigma, ref
        self.tr_r = float(np.trace(ref.sigma))

    def __call__(self, idx: np.ndarray) -> float:
        x, z = self.x[idx], self.z[idx]
        n = len(idx)
        mu = x.mean(0)
        xc, zc = x - mu, z - z.mean(0)
        g = zc.T @ zc if n > zc.shape[1] else zc @ zc.T
        lam = np.clip(np.linalg.eigvalsh(g / (n - 1)), 0, None)
        return float(((mu - self.ref.mu) ** 2).sum() + (xc * xc).sum() / (n - 1) + self.tr_r - 2 * np.sqrt(lam).sum())


class KidPool:
    """KID of any rows (repeats allowed, pairs of one row with itself left out) against the reference:
    ``metrics.KidTerms`` with the pool's Gram matrix computed once."""

    def __init__(self, x: np.ndarray, ref: np.ndarray):
        self.terms = M.KidTerms(x, ref)
        self.k = self.terms.k_gg

    def of_set(self, s: np.ndarray):
        """KID of rows ``idx`` of the set ``s`` (a function of idx; None = the whole set)."""
        k, kr, diag = self.k[np.ix_(s, s)], self.terms.k_gr_mean[s], None
        diag = np.diag(k).copy()
        n = len(s)

        def value(idx=None):
            w = np.ones(n) if idx is None else np.bincount(idx, minlength=n).astype(float)
            m, w2 = w.sum(), w * w
            gg = (w @ k @ w - w2 @ diag) / max(1.0, m * m - w2.sum())
            return float(gg + self.terms.ref_term - 2 * (w @ kr) / m)

        return value


# -- intervals --------------------------------------------------------------------------------------------
def q(values, lo=0.025, hi=0.975) -> tuple[float, float]:
    return float(np.quantile(values, lo)), float(np.quantile(values, hi))


def intervals(est: float, boot: np.ndarray, half: np.ndarray, quarters: np.ndarray, cf=None) -> dict:
    """method -> (centre, lo, hi): centre is the method's own estimate (the plain one, or C&F's)."""
    b_lo, b_hi = q(boot)
    b_med = float(np.median(boot))
    h_lo, h_hi = q(half - np.median(half))
    out = {
        "percentile": (est, b_lo, b_hi),
        "basic": (est, 2 * est - b_hi, 2 * est - b_lo),
        "recentred percentile": (est, est + b_lo - b_med, est + b_hi - b_med),
        "half-sampling": (est, est + h_lo, est + h_hi),
    }
    p = float((boot < est).mean())
    if 0 < p < 1:
        z0 = Z.inv_cdf(p)
        out["BC"] = (est, *q(boot, Z.cdf(2 * z0 - 1.959964), Z.cdf(2 * z0 + 1.959964)))
    else:
        out["BC"] = None
    half_w = T3 * float(np.std(quarters, ddof=1)) / 2
    out["4 disjoint quarters"] = (est, est - half_w, est + half_w)
    if cf is not None:
        out["extrapolated (C&F)"] = (cf, cf + h_lo, cf + h_hi)
    return out


def cf_intercept(sizes, values) -> float:
    """Chong & Forsyth: least-squares line of the metric against 1/m; its value at 1/m = 0."""
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(intercept)


def diff_interval(method: str, est: float, da: np.ndarray, hb: np.ndarray) -> tuple[float, float]:
    """a - b: percentile of the replicate differences, or recentred (percentile / half-sampling)."""
    if method == "percentile":
        return q(da)
    lo, hi = q(hb - np.median(hb)) if method == "half-sampling" else q(da - np.median(da))
    return est + lo, est + hi


def verdict(ci) -> str:
    return M.verdict({"ci": list(ci)})


# -- one set --------------------------------------------------------------------------------------------
def replicate_indices(n: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(bootstrap indices as the shipped method draws them, half-sample indices without replacement)."""
    boot = np.random.default_rng(seed).integers(0, n, size=(reps, n))  # as metrics did before issue 34
    return boot, M._subsets(n, reps, seed)  # as metrics does now


def measure_set(s: np.ndarray, fid_fn: FidPool, kid: KidPool, boot_i, half_i, rng, full: bool) -> dict:
    """Both metrics of the set ``s`` (pool rows): estimate and replicates; ``full`` adds C&F and quarters."""
    n = len(s)
    kv = kid.of_set(s)
    out = {
        "fid": fid_fn(s),
        "fid_boot": np.array([fid_fn(s[i]) for i in boot_i]),
        "fid_half": np.array([fid_fn(s[i]) for i in half_i]),
        "kid": kv(),
        "kid_boot": np.array([kv(i) for i in boot_i]),
        "kid_half": np.array([kv(i) for i in half_i]),
    }
    if full:
        order = rng.permutation(n)
        quarters = [order[k * (n // 4) : (k + 1) * (n // 4)] for k in range(4)]
        out["fid_quarters"] = np.array([fid_fn(s[i]) for i in quarters])
        out["kid_quarters"] = np.array([kv(i) for i in quarters])
        sizes, means = [n // 4, n // 2, 3 * n // 4, n], []
        for m in sizes:
            if m == n // 2:
                means.append(out["fid_half"].mean())
            elif m == n:
                means.append(out["fid"])
            else:
                means.append(np.mean([fid_fn(s[rng.permutation(n)[:m]]) for _ in range(10)]))
        out["fid_cf"] = cf_intercept(sizes, means)
    return out


def covers(iv, target: float, fpc: float) -> bool:
    _, lo, hi = iv
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * fpc
    return mid - half <= target <= mid + half


# -- the benchmark --------------------------------------------------------------------------------------
def features_of(args):
    cache = tempfile.mkdtemp(prefix="stepadapt-cache-")
    os.environ["STEPADAPT_CACHE"] = cache
    cfg = C.preset("tiny")
    data = load_dataset(cfg, split="all")
    ext, _ = F.domain_extractor(data, cfg, cache, log=lambda s: None)
    imgs = data.get(torch.arange(len(data)))
    feats = F.features(ext, imgs)
    perm = np.random.default_rng(args.seed).permutation(len(data))
    ref_i, pool_i = perm[: len(data) // 2], perm[len(data) // 2 :]
    pool_imgs = imgs[torch.as_tensor(pool_i)]
    pools = {
        "real digits": feats[pool_i],
        f"speckle {args.level:g}%": F.features(ext, speckle(pool_imgs, args.level / 100, seed=1)),
        "speckle 1%": F.features(ext, speckle(pool_imgs, 0.01, seed=2)),
        "speckle 1% (seed 3)": F.features(ext, speckle(pool_imgs, 0.01, seed=3)),
    }
    return feats[ref_i], pools


def targets(fid_fn: FidPool, kid: KidPool, n_pool: int, ns, draws: int, rng) -> dict:
    all_i = np.arange(n_pool)
    sizes = np.linspace(n_pool // 5, n_pool, 9).astype(int)
    cf = [np.mean([fid_fn(rng.permutation(n_pool)[:m]) for _ in range(1 if m == n_pool else 5)]) for m in sizes]
    kv = kid.of_set(all_i)
    out = {
        "fid_pool": fid_fn(all_i),
        "fid_inf": cf_intercept(sizes, cf),
        "kid_pool": kv(),
        "fid_at": {int(m): float(v) for m, v in zip(sizes, cf)},
        "n": {},
    }
    for n in ns:
        sets = [rng.permutation(n_pool)[:n] for _ in range(draws)]
        f = np.array([fid_fn(s) for s in sets])
        k = np.array([kv(s) for s in sets])
        out["n"][n] = {"fid_draws": f.tolist(), "kid_draws": k.tolist()}
    return out


def run(args) -> dict:
    t0 = time.time()
    ref, pools = features_of(args)
    stats = M.RefStats.of(ref.mean(0), np.cov(ref, rowvar=False))
    fids = {k: FidPool(v, stats) for k, v in pools.items()}
    kids = {k: KidPool(v, ref) for k, v in pools.items()}
    x = pools["real digits"]
    check = np.arange(300)
    assert abs(fids["real digits"](check) - M.fid(x[check], stats)) < 1e-9
    assert abs(kids["real digits"].of_set(check)() - M.kid(x[check], ref)) < 1e-12
    n_pool = len(x)
    dists = ("real digits", f"speckle {args.level:g}%")
    rng = np.random.default_rng(args.seed + 1)
    truth = {d: targets(fids[d], kids[d], n_pool, args.ns, args.draws, rng) for d in dists}
    print(f"features and targets: {time.time() - t0:.0f} s", flush=True)
    records = {d: {n: [] for n in args.ns} for d in dists}  # per set: estimates and intervals
    pairs = {n: [] for n in args.ns}  # per trial and pair: the difference intervals
    spk1, spk1b = "speckle 1%", "speckle 1% (seed 3)"
    clean, spk = "real digits", dists[1]
    for n in args.ns:
        t1 = time.time()
        for t in range(args.trials):
            seed = 1000 * n + 2 * t
            perm = rng.permutation(n_pool)
            d1, d2 = perm[:n], perm[n : 2 * n]
            ib1, ih1 = replicate_indices(n, args.reps, seed)
            ib2, ih2 = replicate_indices(n, args.reps, seed + 1)  # unpaired: other indices, as `difference`
            sets = {}
            for d in dists:
                for name, s, ib, ih in (("D1", d1, ib1, ih1), ("D2", d2, ib2, ih2)):
                    r = measure_set(s, fids[d], kids[d], ib, ih, rng, full=True)
                    sets[(d, name)] = r
                    records[d][n].append(summarise_set(r))
            if t == 0:  # the half-sampling measured here is what metrics.summarise ships
                shipped = M.summarise(pools[clean][d1], stats, ref, args.reps, seed)
                mine = records[clean][n][-2]
                for metric, floor in (("fid", 0.0), ("kid", -np.inf)):
                    _, lo, hi = mine[f"{metric}_iv"]["half-sampling"]
                    assert np.allclose(shipped[f"{metric}_ci"], [max(floor, lo), hi], rtol=1e-6, atol=1e-9), (
                        metric,
                        shipped[f"{metric}_ci"],
                        lo,
                        hi,
                    )
            for p in (spk1, spk1b):
                sets[(p, "D1")] = measure_set(d1, fids[p], kids[p], ib1, ih1, rng, full=False)
            cases = {
                "null, unpaired: real vs real (disjoint digits)": (sets[(clean, "D1")], sets[(clean, "D2")]),
                f"null, unpaired: {spk} vs {spk} (disjoint digits)": (sets[(spk, "D1")], sets[(spk, "D2")]),
                "null, paired: speckle 1% vs speckle 1%, other seed (same digits)": (
                    sets[(spk1b, "D1")],
                    sets[(spk1, "D1")],
                ),
                "power, paired: speckle 1% vs real (same digits)": (sets[(spk1, "D1")], sets[(clean, "D1")]),
                "power, unpaired: speckle 1% vs real (disjoint digits)": (sets[(spk1, "D1")], sets[(clean, "D2")]),
            }
            row = {}
            for case, (a, b) in cases.items():
                row[case] = {}
                for metric in ("fid", "kid"):
                    est = a[metric] - b[metric]
                    da, hb = a[f"{metric}_boot"] - b[f"{metric}_boot"], a[f"{metric}_half"] - b[f"{metric}_half"]
                    ivs = {m: diff_interval(m, est, da, hb) for m in DIFF_METHODS}
                    row[case][metric] = {
                        "diff": est,
                        **{m: verdict(iv) for m, iv in ivs.items()},
                        "holds": {m: iv[0] <= est <= iv[1] for m, iv in ivs.items()},
                    }
            pairs[n].append(row)
        print(f"n = {n}: {args.trials} trials in {time.time() - t1:.0f} s", flush=True)
    return {
        "truth": truth,
        "records": records,
        "pairs": pairs,
        "n_pool": n_pool,
        "seconds": time.time() - t0,
        "cpu_seconds": time.process_time(),
    }


def nulls(args) -> dict:
    """More trials of the unpaired null at the n the demo and ``eval`` use, with ``metrics.difference`` itself
    (half-sampling, as shipped): two disjoint sets of one distribution, the share called better or worse."""
    t0 = time.time()
    ref, pools = features_of(args)
    stats = M.RefStats.of(ref.mean(0), np.cov(ref, rowvar=False))
    rng = np.random.default_rng(args.seed + 2)
    n_pool = len(pools["real digits"])
    out = {}
    for n in args.null_ns:
        for d in ("real digits", f"speckle {args.level:g}%"):
            calls = {"fid": [], "kid": []}
            for t in range(args.null_trials):
                perm = rng.permutation(n_pool)
                a, b = pools[d][perm[:n]], pools[d][perm[n : 2 * n]]
                for metric in calls:
                    calls[metric].append(
                        M.verdict(M.difference(a, b, stats, ref, metric, paired=False, reps=args.reps, seed=50_000 + t))
                    )
            out.setdefault(n, {})[d] = {
                m: {"verdicts": len(v) - v.count("no significant difference"), "trials": len(v)}
                for m, v in calls.items()
            }
        print(f"nulls at n = {n}: {time.time() - t0:.0f} s", flush=True)
    return {"nulls": out, "seconds": time.time() - t0, "cpu_seconds": time.process_time()}


def nulls_markdown(res: dict, meta: dict) -> str:
    md = [
        f"Unpaired null with `metrics.difference` as shipped (half-sampling, {meta['reps']} half-samples): two "
        f"disjoint sets of n from one distribution, {meta['null_trials']} pairs per distribution and n; share "
        f"called better or worse (nominal at most 5%). Commit {meta['commit']}, {meta['cpu']}, 1 thread, "
        f"{res['seconds']:.0f} s ({res['cpu_seconds']:.0f} s of CPU time).",
        "",
        "| n | metric | real digits | speckle " + f"{meta['level']:g}%" + " | both |",
        "|---|---|---|---|---|",
    ]
    for n, by_d in res["nulls"].items():
        for metric in ("fid", "kid"):
            cells = [by_d[d][metric] for d in by_d]
            v, t = sum(c["verdicts"] for c in cells), sum(c["trials"] for c in cells)
            md.append(
                f"| {n} | {metric.upper()} | "
                + " | ".join(f"{c['verdicts']} of {c['trials']}" for c in cells)
                + f" | {v} of {t} ({v / t:.1%}) |"
            )
    return "\n".join(md) + "\n"


def summarise_set(r: dict) -> dict:
    return {
        "fid": r["fid"],
        "kid": r["kid"],
        "fid_iv": intervals(r["fid"], r["fid_boot"], r["fid_half"], r["fid_quarters"], r["fid_cf"]),
        "kid_iv": intervals(r["kid"], r["kid_boot"], r["kid_half"], r["kid_quarters"]),
    }


# -- tables ---------------------------------------------------------------------------------------------
def coverage(res: dict, n_pool: int) -> dict:
    """metric -> dist -> n -> method -> {coverage of each target (FPC and raw), width, holds its estimate}."""
    out = {}
    for metric, methods in (("fid", FID_METHODS), ("kid", KID_METHODS)):
        out[metric] = {}
        for d, by_n in res["records"].items():
            tr = res["truth"][d]
            out[metric][d] = {}
            for n, sets in by_n.items():
                draws = np.array(tr["n"][n][f"{metric}_draws"] + [s[metric] for s in sets])
                tg = {
                    "E_n": float(draws.mean()),
                    "pool": tr[f"{metric}_pool"],
                    "inf": tr["fid_inf"] if metric == "fid" else tr["kid_pool"],
                }
                fpc = float(np.sqrt(1 - n / n_pool))
                cell = {
                    "targets": tg,
                    "sd_over_draws": float(draws.std(ddof=1)),
                    "draws": len(draws),
                    "fpc": fpc,
                    "methods": {},
                }
                for m in methods:
                    ivs = [s[f"{metric}_iv"][m] for s in sets]
                    ok = [iv for iv in ivs if iv is not None]
                    if not ok:
                        cell["methods"][m] = {"defined": 0.0}
                        continue
                    cell["methods"][m] = {
                        "defined": len(ok) / len(ivs),
                        **{f"cover_{k}": float(np.mean([covers(iv, v, fpc) for iv in ok])) for k, v in tg.items()},
                        **{f"cover_{k}_raw": float(np.mean([covers(iv, v, 1.0) for iv in ok])) for k, v in tg.items()},
                        "width": float(np.mean([iv[2] - iv[1] for iv in ok])),
                        "holds_estimate": float(np.mean([iv[1] <= iv[0] <= iv[2] for iv in ok])),
                        "implied_sd_ratio": float(
                            np.mean([(iv[2] - iv[1]) / 3.92 for iv in ok]) / (cell["sd_over_draws"] / fpc)
                        ),
                    }
                out[metric][d][n] = cell
    return out


def verdict_rates(res: dict) -> dict:
    """case -> metric -> method -> n -> {share of 'worse', 'better', trials}."""
    out = {}
    for n, trials in res["pairs"].items():
        for case in trials[0]:
            for metric in ("fid", "kid"):
                for m in DIFF_METHODS:
                    v = [t[case][metric][m] for t in trials]
                    out.setdefault(case, {}).setdefault(metric, {}).setdefault(m, {})[n] = {
                        "worse": v.count("worse"),
                        "better": v.count("better"),
                        "trials": len(v),
                        "holds": sum(t[case][metric]["holds"][m] for t in trials),
                    }
    for by_metric in out.values():
        for by_m in by_metric.values():
            for by_n in by_m.values():
                by_n["all"] = {
                    k: sum(r[k] for r in list(by_n.values())) for k in ("worse", "better", "trials", "holds")
                }
    return out


def markdown(cov: dict, rates: dict, meta: dict) -> str:
    md = [
        f"Real digits (bundled, preset `tiny`, shipped domain net) split into a reference of {meta['ref']} and a "
        f"pool of {meta['pool']}; {meta['trials']} trials per n, each 2 disjoint sets per distribution "
        f"({2 * meta['trials']} sets per cell), {meta['reps']} resamples per interval. Commit {meta['commit']}, "
        f"{meta['cpu']}, 1 thread, {meta['seconds']:.0f} s"
        + (f" ({meta['cpu_seconds']:.0f} s of CPU time)." if meta.get("cpu_seconds") else "."),
        "",
        "Coverage of the nominal 95% interval (% of sets whose interval holds the target; intervals scaled by "
        "the finite-pool factor sqrt(1 - n/2500) about their midpoint) and mean width. Targets: **E_n** the mean "
        "value over independent sets of n, **2500** the whole pool's value, **inf** FID extrapolated to "
        "1/n -> 0 (KID: the pool's value). *holds est.*: the interval contains its own estimate.",
        "",
    ]
    for metric in ("fid", "kid"):
        scale, unit = (1.0, "") if metric == "fid" else (1e3, " x1e3")
        for d, by_n in cov[metric].items():
            ns = list(by_n)
            tg = "; ".join(
                f"n {n}: E_n {by_n[n]['targets']['E_n'] * scale:.4f}, sd {by_n[n]['sd_over_draws'] * scale:.4f}"
                for n in ns
            )
            first = by_n[ns[0]]["targets"]
            md += [
                f"**{metric.upper()}{unit}, {d}** (2500: {first['pool'] * scale:.4f}; inf: "
                f"{first['inf'] * scale:.4f}; {tg})",
                "",
                "| method | " + " | ".join(f"n={n} E_n | 2500 | inf | width" for n in ns) + " | holds est. |",
                "|---|" + "---|---|---|---|" * len(ns) + "---|",
            ]
            for m, r0 in by_n[ns[0]]["methods"].items():
                cells, holds, defined = [], [], []
                for n in ns:
                    r = by_n[n]["methods"][m]
                    if not r.get("width") and r.get("defined", 0) == 0:
                        cells.append("undefined | | |")
                        continue
                    cells.append(
                        f"{r['cover_E_n']:.0%} | {r['cover_pool']:.0%} | {r['cover_inf']:.0%} | "
                        f"{r['width'] * scale:.4f}"
                    )
                    holds.append(r["holds_estimate"])
                    defined.append(r["defined"])
                name = m + (f" (defined in {np.mean(defined):.0%})" if defined and np.mean(defined) < 1 else "")
                md.append(
                    f"| {name} | " + " | ".join(cells) + f" | {np.mean(holds):.0%} |"
                    if holds
                    else f"| {name} | " + " | ".join(cells) + " | - |"
                )
            md.append("")
    ns = [n for n in next(iter(next(iter(rates.values())).values()))["percentile"] if n != "all"]
    md += [
        "Verdicts (`metrics.verdict`: better / worse when the whole 95% interval of a - b is below / above zero), "
        "the difference's interval made by each method: share of trials with a verdict at n = "
        + " / ".join(map(str, ns))
        + f" ({meta['trials']} trials each), then over all n. Null cases: any verdict "
        "is a false positive (nominal at most 5%); power cases: share of 'worse'. *holds diff*: the interval "
        "contains the difference it is about (all trials).",
        "",
        "| case | metric | " + " | ".join(DIFF_METHODS) + " | holds diff (" + " / ".join(DIFF_METHODS) + ") |",
        "|---|---|" + "---|" * (len(DIFF_METHODS) + 1),
    ]
    for case, by_metric in rates.items():
        for metric, by_m in by_metric.items():

            def share(r):
                return (r["worse"] + r["better"] if case.startswith("null") else r["worse"]) / r["trials"]

            cells = [
                " / ".join(f"{share(by_m[m][n]):.0%}" for n in ns) + f" (all {share(by_m[m]['all']):.1%})"
                for m in DIFF_METHODS
            ]
            holds = " / ".join(f"{by_m[m]['all']['holds'] / by_m[m]['all']['trials']:.0%}" for m in DIFF_METHODS)
            md.append(f"| {case} | {metric.upper()} | " + " | ".join(cells) + f" | {holds} |")
    return "\n".join(md) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    names = (
        [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
        if info.exists()
        else []
    )
    return names[0] if names else platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=25)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--draws", type=int, default=300, help="independent sets per n for E[FID_n]")
    ap.add_argument("--ns", default="256,512,1024")
    ap.add_argument("--level", type=float, default=3.0, help="speckle level (%%) of the damaged distribution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    ap.add_argument("--nulls", action="store_true", help="only the larger unpaired-null study (_nulls.json, .md)")
    ap.add_argument("--null-ns", default="512,1024")
    ap.add_argument("--null-trials", type=int, default=40)
    args = ap.parse_args()
    args.ns = [int(v) for v in args.ns.split(",")]
    args.null_ns = [int(v) for v in args.null_ns.split(",")]
    out = Path(args.out)
    if args.nulls:
        torch.set_num_threads(1)
        res = nulls(args)
        meta = {
            "reps": args.reps,
            "null_trials": args.null_trials,
            "level": args.level,
            "commit": _commit(),
            "cpu": _cpu(),
            "ns": args.null_ns,
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / "interval_coverage_nulls.json").write_text(json.dumps({"meta": meta, **res}, indent=1))
        md = nulls_markdown(res, meta)
        (out / "interval_coverage_nulls.md").write_text(md)
        print(md)
        return
    if args.render:
        saved = json.loads((out / "interval_coverage.json").read_text())
        md = markdown(saved["coverage"], saved["verdicts"], saved["meta"])
        (out / "interval_coverage.md").write_text(md)
        print(md)
        return
    torch.set_num_threads(1)
    res = run(args)
    n_pool = res["n_pool"]
    cov, rates = coverage(res, n_pool), verdict_rates(res)
    commit, cpu = _commit(), _cpu()
    meta = {
        "ref": 5000 - n_pool,
        "pool": n_pool,
        "trials": args.trials,
        "reps": args.reps,
        "draws": args.draws,
        "level": args.level,
        "ns": args.ns,
        "commit": commit,
        "cpu": cpu,
        "seconds": res["seconds"],
        "cpu_seconds": res["cpu_seconds"],
    }
    out.mkdir(parents=True, exist_ok=True)
    truth = {d: {k: v for k, v in t.items() if k != "n"} for d, t in res["truth"].items()}
    (out / "interval_coverage.json").write_text(
        json.dumps({"meta": meta, "truth": truth, "coverage": cov, "verdicts": rates}, indent=1, default=float)
    )
    md = markdown(cov, rates, meta)
    (out / "interval_coverage.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
