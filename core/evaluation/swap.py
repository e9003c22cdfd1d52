"""The per-group swap test: where on the timestep axis does a group's own (pruned, fine-tuned) model change the
samples? For each non-empty group g, a model that is the base at every timestep except g's, where g's model
runs; its FID and KID against the base's samples from the same noise, paired, with a verdict.

A group whose swap is WORSE is one where the budget cut capacity the data needed there; BETTER, one where the
fine-tune helped more than the pruning cost. Read beside the held-out loss per group (``eval``'s loss table): the
two have disagreed at the tiny preset.

    eval.json["swap"] = {"n", "steps", "rows": [{"group", "t_start", "t_end", "budget_ratio", "macs_ratio",
                         "fid", "fid_ci", "kid", "kid_ci", "diff": {"fid": {...}, "kid": {...}}}]}
"""

from __future__ import annotations

from typing import Callable, Optional

from core.evaluation.text import VERDICT_PHRASE


def swap_test(
    run,
    device="cpu",
    log: Callable[[str], None] = print,
    n: Optional[int] = None,
    steps: Optional[int] = None,
    inception=None,
) -> dict:
    """Run the swap test on ``run`` (a base and a fine-tuned model for every non-empty group); merged into
    ``eval.json`` as ``swap`` and returned."""
    from core.errors import UserError
    from core.evaluation.evaluate import FidSampler, load_eval
    from core.method.artifacts import load_unet
    from core.method.progressive import ProgressiveDenoiser
    from core.method.schedule import run_schedule
    from core.model.diffusion import create_diffusion
    from core.runs import atomic_write_json

    cfg = run.config
    sched = run_schedule(run)
    missing = [g.index for g in sched.nonempty if not run.model(run.group_stage(g.index)).exists()]
    if not run.model("base").exists() or missing:
        raise UserError(
            f"the swap test needs the base and every group's model (missing: "
            f"{', '.join(map(str, missing)) or 'base'}); finish the run first"
        )
    n, steps = n or cfg["eval"]["fid_n"], steps or cfg["eval"]["steps"]
    sampler = FidSampler(run, create_diffusion(cfg), n, steps, inception, device, log)
    base = load_unet(run.model("base"), device)
    ref = sampler.features(base, "swap_base", None)
    base_row = sampler.summary(ref)
    rows = []
    for g in sched.nonempty:
        own = load_unet(run.model(run.group_stage(g.index)), device)
        models = {k.index: (own if k.index == g.index else base) for k in sched.nonempty}
        mixed = ProgressiveDenoiser(models, sched.group_of).to(device).eval()
        feats = sampler.features(mixed, f"swap_g{g.index:02d}", None)
        s = sampler.summary(feats)
        rows.append(
            {
                "group": g.index,
                "t_start": g.t_start,
                "t_end": g.t_end,
                "budget_ratio": g.budget_ratio,
                "macs_ratio": _macs_ratio(own, base, cfg),
                "fid": s["fid"],
                "fid_ci": s["fid_ci"],
                "kid": s["kid"],
                "kid_ci": s["kid_ci"],
                "diff": sampler.differences(feats, ref, paired=True),
            }
        )
        d = rows[-1]["diff"]["fid"]
        said = VERDICT_PHRASE[d["verdict"]]
        log(
            f"swap group {g.index} (t {g.t_start}-{g.t_end}): FID {s['fid']:.4f}, {said} the base "
            f"({d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}])"
        )
    out = load_eval(run)
    out["swap"] = {
        "n": n,
        "steps": steps,
        "base": {k: base_row[k] for k in ("fid", "fid_ci", "kid", "kid_ci")},
        "fid_kind": base_row["fid_kind"],
        "rows": rows,
    }
    atomic_write_json(out, run.eval_file())
    return out["swap"]


def _macs_ratio(own, base, cfg: dict) -> float:
    from core.model.macs import count

    m = cfg["model"]
    return (
        count(own, m["image_size"], m["in_channels"])["macs"] / count(base, m["image_size"], m["in_channels"])["macs"]
    )


def swap_summary(swap: dict) -> str:
    """One sentence: which groups' own models made the samples worse or better than the base's."""
    worse = [r["group"] for r in swap["rows"] if r["diff"]["fid"]["verdict"] == "worse"]
    better = [r["group"] for r in swap["rows"] if r["diff"]["fid"]["verdict"] == "better"]
    parts = [
        f"worse than the base with group {', '.join(map(str, worse))}'s own model" if worse else "",
        f"better with group {', '.join(map(str, better))}'s" if better else "",
    ]
    said = "; ".join(p for p in parts if p)
    return (
        "Swapping one group's model into the base: "
        + (said or "no group changes FID significantly")
        + f" (paired 95% intervals, n = {swap['n']})."
    )
