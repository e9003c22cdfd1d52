"""The progressive model's gap to its controls by base maturity, and the step where the method starts to pay.

A study whose arms fork a base at several steps (``at``: milestones of one long stage 1) answers "from which base
on does the method pay?". Each arm's run compares its progressive model with every control of its own run on
the same noise (``eval.json`` comparisons: a paired bootstrap of the FID difference, progressive minus control,
negative = the progressive model is better). Arms that differ only in their base step form one *series* (for
example every ``prune.method: proxy`` arm); along a series:

    gap(s) = FID(progressive at base step s) - FID(control at base step s),  with its 95% interval

and the crossover is the first base step from which on every gap of the series is negative with its interval
(the method pays there and at every later step measured); without one, "no crossover up to S_max".

An arm with several training seeds (``seed_of``) is one point: the mean of its seeds' gaps with a t-interval over
seeds (``over_seeds``), since the bootstrap of one run cannot see training noise.
"""

from __future__ import annotations

import json
import math
from typing import Optional

AGAINST = ("control", "uniform", "dense-small", "base")


def over_seeds(values: list[float]) -> dict:
    """Mean, standard deviation and 95% t-interval of one measure over training seeds:
    mean +- t(0.975, k - 1) * sd / sqrt(k)."""
    from scipy.stats import t

    k = len(values)
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = float(t.ppf(0.975, k - 1)) * sd / math.sqrt(k)
    return {"mean": mean, "sd": sd, "ci": [mean - half, mean + half], "n": k}


def verdict_of(ci: list[float]) -> str:
    """'better' / 'worse' for the progressive model when the gap's interval excludes zero, else 'same'."""
    return "better" if ci[1] < 0 else "worse" if ci[0] > 0 else "same"


def run_gaps(ev: dict) -> dict:
    """One run's progressive-model FID gaps, ``{against: {diff, ci, verdict}}``, from its eval.json."""
    out = {}
    for c in ev.get("comparisons", []):
        d = c.get("fid")
        if c.get("model") == "progressive" and c.get("against") in AGAINST and d:
            out[c["against"]] = {"diff": d["diff"], "ci": list(d["ci"]), "verdict": verdict_of(d["ci"])}
    return out


def base_steps(ev: dict) -> Optional[int]:
    """The training steps of the base the run forked (its evaluated base model's)."""
    return (ev.get("models", {}).get("base") or {}).get("train_steps")


def series_key(arm: dict) -> str:
    """What an arm changes besides its base step and seed: arms with the same key form one series."""
    keep = {k: v for k, v in (arm.get("set") or {}).items() if k != "seed"}
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(keep.items())) or "(the study's common settings)"


def gap_points(arms: list[dict], run_names: dict, evals: dict) -> list[dict]:
    """One point per arm (seeds merged): its series, base steps and gaps; arms not yet evaluated are left out."""
    by_arm: dict[str, list[dict]] = {}
    for arm in arms:
        by_arm.setdefault(arm.get("seed_of") or arm["name"], []).append(arm)
    points = []
    for name, members in by_arm.items():
        evs = [evals.get(run_names[a["name"]]) or {} for a in members]
        gaps = [run_gaps(e) for e in evs]
        steps = {base_steps(e) for e in evs}
        if not all(gaps) or len(steps) != 1 or None in steps:
            continue
        point = {"arm": name, "series": series_key(members[0]), "base_steps": steps.pop(), "seeds": len(members)}
        if len(members) == 1:
            point["gaps"] = gaps[0]
        else:  # the mean gap over training seeds, with its t-interval over seeds
            point["gaps"] = {}
            for against in set.intersection(*(set(g) for g in gaps)):
                agg = over_seeds([g[against]["diff"] for g in gaps])
                point["gaps"][against] = {"diff": agg["mean"], "ci": agg["ci"], "verdict": verdict_of(agg["ci"])}
        points.append(point)
    return sorted(points, key=lambda p: (p["series"], p["base_steps"]))


def crossover(points: list[dict], against: str = "control") -> dict:
    """Per series with at least two base steps: the first base step from which on every gap to ``against`` is
    significantly negative, or None with the largest step measured."""
    out = {}
    for series in sorted({p["series"] for p in points}):
        pts = [p for p in points if p["series"] == series and against in p["gaps"]]
        if len({p["base_steps"] for p in pts}) < 2:
            continue
        step = None
        for p in reversed(pts):  # from the most mature base back, while the method still pays
            if p["gaps"][against]["verdict"] != "better":
                break
            step = p["base_steps"]
        out[series] = {"against": against, "step": step, "up_to": pts[-1]["base_steps"]}
    return out


def crossover_text(series: str, c: dict) -> str:
    if c["step"] is None:
        return f"{series}: no crossover up to {c['up_to']:,} base steps (against the {c['against']})"
    return f"{series}: pays against the {c['against']} from {c['step']:,} base steps on (measured up to {c['up_to']:,})"


def gap_cell(g: Optional[dict]) -> str:
    """'better -0.012 [-0.020, -0.004]', 'n.s. +0.003 [-0.004, +0.010]', or '-'."""
    if not g:
        return "-"
    word = {"better": "better", "worse": "worse"}.get(g["verdict"], "n.s.")
    return f"{word} {g['diff']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]"


def gap_rows(points: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The gap table's header and rows: series, base steps, seeds, then one column per control measured."""
    cols = [a for a in AGAINST if any(a in p["gaps"] for p in points)]
    head = ["series", "base steps", "seeds", *[f"progressive - {a} (FID)" for a in cols]]
    rows = [
        [p["series"], f"{p['base_steps']:,}", str(p["seeds"]), *[gap_cell(p["gaps"].get(a)) for a in cols]]
        for p in points
    ]
    return head, rows


def gap_section(res: dict) -> Optional[tuple]:
    """A report's table section of the gaps by base steps (None for a study whose arms share one base step)."""
    points = res.get("gaps") or []
    if len({p["base_steps"] for p in points}) < 2:
        return None
    head, rows = gap_rows(points)
    said = [crossover_text(s, c) for s, c in (res.get("crossover") or {}).items()]
    note = (
        "The progressive model minus each model of its own run, paired on the same noise, 95% bootstrap "
        "intervals (over training seeds where an arm has several); negative: the progressive model is better. "
        + " ".join(s + "." for s in said)
    )
    return ("table", "Where the method pays: the gap to each control by base steps", note, head, rows)


def plot_gaps(points: list[dict], path) -> bool:
    """The gap to each control against base steps (log x), one line per series and control, 95% error bars."""
    if len({p["base_steps"] for p in points}) < 2:
        return False
    from core.evaluation.report_figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    style = {"control": "^-", "uniform": "v:", "dense-small": "P-.", "base": "o--"}
    for series in sorted({p["series"] for p in points}):
        pts = [p for p in points if p["series"] == series]
        for against in AGAINST:
            have = [p for p in pts if against in p["gaps"]]
            if not have:
                continue
            xs = [p["base_steps"] for p in have]
            ys = [p["gaps"][against]["diff"] for p in have]
            err = [
                [y - p["gaps"][against]["ci"][0] for y, p in zip(ys, have)],
                [p["gaps"][against]["ci"][1] - y for y, p in zip(ys, have)],
            ]
            ax.errorbar(xs, ys, yerr=err, fmt=style[against], capsize=3, label=f"{series}: vs {against}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("base training steps (where stage 2 starts)")
    ax.set_ylabel("FID: progressive minus control")
    ax.set_title("Below zero the method pays (95% intervals)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
