"""Evaluation of a run (its ``eval.json``) for the base, the equal-compute control and the progressive model:

* sample quality: FID and KID with 95% bootstrap intervals, precision and recall (``metrics``), from ``n``
  samples drawn with the same noise for every model;
* cost: params and MACs averaged over timesteps (the paper's Table 1), and the training steps behind it;
* held-out loss (eps-MSE) per timestep group and over all T, with 95% intervals;
* ``comparisons``: each pair of ``names.MODEL_PAIRS`` on FID and KID (a paired bootstrap of the difference),
  the per-group loss change with its interval, the MACs ratio, and a verdict on the primary metric.

A model whose file and settings are unchanged since its last evaluation is not measured again.
"""

from __future__ import annotations

import shlex
from typing import Optional

import numpy as np

from core.config import shared_trunk
from core.evaluation.metrics import INTERVAL
from core.names import CONTROLS, MODEL_PAIRS, SAMPLE_MODELS


def load_eval(run) -> dict:
    """``RUN/eval.json``, or {} when the run has not been evaluated (or the file is unreadable)."""
    from core.runs import read_json

    return read_json(run.eval_file()) or {}


def evaluate_run(
    run,
    device="cpu",
    log=print,
    progress=None,
    models=SAMPLE_MODELS,
    n=None,
    steps=None,
    inception=None,
    fid=None,
    force=False,
) -> dict:
    """Evaluate the run's models (see the module docstring); merged into ``RUN/eval.json`` and returned."""
    import datetime as _dt

    from core.evaluation.losses import eval_images
    from core.method.schedule import run_schedule
    from core.model.diffusion import create_diffusion
    from core.runs import atomic_write_json

    cfg = run.config
    n, steps, fid = _settings(cfg, n, steps, fid)
    present = _present(run, models)
    out = load_eval(run)
    out["models"] = {w: r for w, r in out.get("models", {}).items() if run.model(w).exists()}
    sched, diffusion = run_schedule(run), create_diffusion(cfg)
    sampler = FidSampler(run, diffusion, n, steps, inception, device, log) if fid else None
    settings = _row_settings(cfg, n, steps, sampler)
    todo = [w for w in present if force or not _fresh(run, w, out["models"].get(w), settings)]
    curve = _curve_plan(run, sched, sampler, settings, "progressive" in present, force)
    tick = _Ticks(
        len(todo) * (2 + (sampler.ticks if sampler else 0)) + (len(curve[3]) * curve[0].ticks if curve else 0), progress
    )
    images = eval_images(cfg, cfg["eval"]["loss_images"], seed=cfg["seed"]) if todo else None
    rescored = False
    for which in present:
        if which in todo:
            out["models"][which] = _measure(run, which, sched, diffusion, images, sampler, settings, device, tick, log)
            out.pop("comparisons", None)  # kept as measured (an eval stopped by a time limit resumes from here);
            atomic_write_json(out, run.eval_file())  # the comparisons come when every model is measured
        elif sampler and out["models"][which].get("interval") != INTERVAL:  # scored before the intervals changed
            out["models"][which].update(sampler.summary(np.load(run.eval_array("features", which))))
            rescored = True
            log(
                f"{which}: model and settings unchanged; its intervals scored again ({INTERVAL}) from its stored "
                "features"
            )
        else:
            log(f"{which}: model and settings unchanged since its evaluation; reused")
    curve_changed = False
    if curve:
        out["fid_curve"], curve_changed = _curve_rows(run, sched, curve, device, tick, log)
    if todo or rescored or "comparisons" not in out:  # unchanged models: their comparisons stand
        out["comparisons"] = compare_models(run, out["models"], sampler)
    out.update(
        {
            "sample_steps": steps,
            "num_timesteps": sched.num_timesteps,
            "primary": cfg["eval"]["primary"],
            "loss_images": cfg["eval"]["loss_images"],
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    if sampler:
        out["fid_extractor"] = {k: v for k, v in sampler.ext_info.items() if k != "path"}
    if todo or rescored or curve_changed or not run.eval_file().exists():
        atomic_write_json(out, run.eval_file())
    return out


def _settings(cfg: dict, n, steps, fid) -> tuple:
    """(n, steps, fid) with the config's defaults, checked."""
    from core.errors import UserError

    e = cfg["eval"]
    n = e["fid_n"] if n is None else n
    steps = e["steps"] if steps is None else steps
    fid = e["fid"] if fid is None else fid
    if fid and n < 2:
        raise UserError(f"FID needs at least 2 samples (--n {n})")
    if not 1 <= steps <= cfg["diffusion"]["steps"]:
        raise UserError(f"--sample-steps must be in [1, {cfg['diffusion']['steps']}]")
    return n, steps, fid


def _present(run, models) -> list[str]:
    from core.errors import UserError

    present = [w for w in models if run.model(w).exists()]
    if not present:
        raise UserError(
            f"run {run.name} has no trained model to evaluate ({', '.join(models)}); "
            f"train it first (stepadapt run / stepadapt resume {shlex.quote(run.name)})"
        )
    return present


def _row_settings(cfg: dict, n: int, steps: int, sampler) -> dict:
    """Everything a model's row depends on besides the model file: a change means measuring again."""
    e = cfg["eval"]
    return {
        "n": n if sampler else None,
        "steps": steps,
        "extractor": sampler.ext_info["id"] if sampler else None,
        "loss_images": e["loss_images"],
        "loss_draws": e["loss_draws"],
        "seed": cfg["seed"],
        "bootstrap": e["bootstrap"],
        "schedule": cfg["schedule"],
    }


def _curve_plan(run, sched, sampler, settings: dict, progressive: bool, force: bool):
    """(sampler at finetune.fid_n, its settings, the steps every group reached, those to measure) for the FID
    curve during fine-tuning, or None when the run does not measure one (see ``curve``)."""
    import copy

    from core.evaluation.curve import curve_steps, curve_todo

    n = run.config["finetune"].get("fid_n", 0)
    steps = curve_steps(run, sched) if sampler and progressive and n else []
    if not steps:
        return None
    small = copy.copy(sampler)
    small.n, small.ticks = n, -(-n // run.config["eval"]["batch_size"]) * sampler.steps
    s = {**settings, "n": n}
    return small, s, steps, steps if force else curve_todo(run, steps, sched, s)


def _curve_rows(run, sched, curve, device, tick, log) -> tuple[list[dict], bool]:
    from core.evaluation.curve import update_curve

    small, s, steps, todo = curve
    if not todo:
        log("FID during fine-tuning: snapshots and settings unchanged; reused")
    rows, changed = update_curve(run, sched, small, s, steps, todo, device, tick, log)
    return [{k: v for k, v in r.items() if k not in ("settings", "mtime")} for r in rows], changed


def _fresh(run, which: str, old, settings: dict) -> bool:
    """Whether ``old`` (the model's row in eval.json) still holds: same model file, same settings, arrays there."""
    if not old or old.get("settings") != settings:
        return False
    if old.get("model_mtime") != run.model(which).stat().st_mtime:
        return False
    needed = [run.eval_array("losses", which)] + ([run.eval_array("features", which)] if settings["n"] else [])
    return all(p.exists() for p in needed)


def _measure(run, which, sched, diffusion, images, sampler, settings, device, tick, log) -> dict:
    from core.evaluation.losses import loss_report

    cfg = run.config
    model = _load(run, which, device)
    losses = loss_report(model, diffusion, images, sched, cfg["eval"]["loss_draws"], device)
    _save_array(losses.pop("samples"), run.eval_array("losses", which))
    row = {
        **model_cost(model, which, cfg, settings["steps"], sched, run),
        **losses,
        "loss_group_index": [g.index for g in sched.nonempty],
    }
    tick()
    if sampler:
        feats = sampler.features(model, which, tick)
        _save_array(feats, run.eval_array("features", which))
        row.update(sampler.summary(feats), fid_grid=f"samples/eval_{which}.png")
    row.update(settings=settings, model_mtime=run.model(which).stat().st_mtime)
    tick()
    log(
        f"{which}: {row['params'] / 1e6:.3f} M params, {row['macs'] / 1e9:.4f} GMACs avg over T, held-out loss "
        f"{row['loss']:.5f}"
        + (
            f", {row['fid_kind'].split(' (')[0]} {row['fid']:.3f} {_ci(row['fid_ci'])}, "
            f"KID {row['kid']:.4f} {_ci(row['kid_ci'], '{:.4f}')}"
            if sampler
            else ""
        )
    )
    return row


def _ci(ci, spec: str = "{:.3f}") -> str:
    return f"[{spec.format(ci[0])}, {spec.format(ci[1])}]"


def _save_array(arr: np.ndarray, path) -> None:
    from core.runs import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: np.save(f, arr))


def _load(run, which: str, device):
    from core.method.artifacts import load_progressive, load_unet

    path = run.model(which)
    return load_progressive(path, device) if which == "progressive" else load_unet(path, device)


def model_cost(model, which: str, cfg: dict, steps: int, sched, run=None) -> dict:
    """Params and MACs per sample averaged over all T and over the ``steps`` sampled steps (Table 1), and the
    training steps behind the model (progressive: stage 1 plus every group's fine-tune; control: the same)."""
    from core.model.macs import count, progressive_cost

    m = cfg["model"]
    trained = _train_steps(run, which, cfg, sched)
    if which == "progressive":
        cost = progressive_cost(model, m["image_size"], m["in_channels"], steps)
        return {
            "params": cost["avg_all"]["params"],
            "macs": cost["avg_all"]["macs"],
            "macs_sampled": cost["avg_sampled"]["macs"],
            "attn_macs": cost["avg_all"]["attn_macs"],
            "params_total": sum(p.numel() for p in model.parameters()),  # a shared trunk's encoder once
            "train_steps": trained,
            "train_precision": _train_precision(run, which, sched),
            **({"trunk": model.trunk} if getattr(model, "trunk", None) else {}),
        }
    c = count(model, m["image_size"], m["in_channels"])
    return {
        "params": c["params"],
        "macs": c["macs"],
        "macs_sampled": c["macs"],
        "attn_macs": c["attn_macs"],
        "params_total": c["params"],
        "train_steps": trained,
        "train_precision": _train_precision(run, which, sched),
    }


def _train_precision(run, which: str, sched) -> Optional[list[str]]:
    """The precisions the model's training ran at (``fp32``, ``bf16 autocast``), from its artifacts: the
    progressive model's are its stage 1's, its groups' fine-tunes' and a shared trunk's. None where an artifact
    predates the record."""
    from core.method.fields import artifact_fields

    if run is None:
        return None
    paths = [run.model(which)] if which in CONTROLS else [run.model("base")]
    if which == "progressive":
        paths += [run.model(run.group_stage(g.index)) for g in sched.nonempty]
        paths += [run.model("trunk")] if shared_trunk(run.config) else []
    found = [artifact_fields(p).get("precisions") for p in paths if p.exists()]
    return None if not found or any(f is None for f in found) else sorted({x for f in found for x in f})


def _train_steps(run, which: str, cfg: dict, sched) -> int:
    """Optimiser steps behind a model, from the artifacts: base; control (base + its added steps);
    progressive (base + every group's fine-tune, and a shared trunk's steps)."""
    from core.method.fields import artifact_step

    if run is None:
        return cfg["train"]["steps"]
    base = artifact_step(run.model("base")) or 0
    if which == "progressive" and (
        (cfg.get("finetune") or {}).get("single_stage") or cfg["prune"]["method"] == "scratch"
    ):
        base = 0  # the groups' models started from fresh weights (single-stage, scratch): their own steps only
    if which == "control":
        return artifact_step(run.model("control")) or base
    if which == "uniform":  # stage 1, then the pruned copy's fine-tune on all timesteps
        return base + (artifact_step(run.model("uniform")) or 0)
    if which == "dense-small":  # from fresh weights: its own steps only
        return artifact_step(run.model("dense-small")) or 0
    if which == "progressive":
        trunk = (artifact_step(run.model("trunk")) or 0) if shared_trunk(cfg) else 0
        return base + trunk + sum(artifact_step(run.model(run.group_stage(g.index))) or 0 for g in sched.nonempty)
    return base


# -- comparisons -------------------------------------------------------------------------------------------
def compare_models(run, rows: dict, sampler=None) -> list[dict]:
    """Each pair of ``MODEL_PAIRS`` the run has: sample metrics' differences with intervals (from the stored
    features; paired, as every model's samples share their noise), loss changes per group, MACs ratio, verdict."""
    out = []
    for a, b in MODEL_PAIRS:
        if a not in rows or b not in rows:
            continue
        ra, rb = rows[a], rows[b]
        entry = {
            "model": a,
            "against": b,
            "macs_ratio": ra["macs"] / rb["macs"],
            "params_ratio": ra["params"] / rb["params"],
            "primary": run.config["eval"]["primary"],
            "loss_groups": loss_changes(run, a, b, ra, rb),
        }
        same = all(ra.get("settings", {}).get(k) == rb.get("settings", {}).get(k) for k in ("n", "steps", "extractor"))
        if sampler and same and ra.get("fid") is not None and rb.get("fid") is not None:
            fa, fb = (np.load(run.eval_array("features", w)) for w in (a, b))
            entry.update(sampler.differences(fa, fb, paired=True))
        entry["verdict"] = entry.get(entry["primary"], {}).get("verdict")
        out.append(entry)
    return out


def loss_changes(run, a: str, b: str, ra: dict, rb: dict) -> dict:
    """Per group: loss of a minus loss of b with a paired 95% interval, and the relative change."""
    from core.evaluation.losses import mean_ci

    la, lb = (np.load(run.eval_array("losses", w)) for w in (a, b))
    ga, gb = ra.get("loss_group_index"), rb.get("loss_group_index")
    if ga != gb or la.shape != lb.shape:
        return {}
    out = {}
    for i, g in enumerate(ga):
        d = la[i] - lb[i]
        out[str(g)] = {"diff": float(d.mean()), "ci": mean_ci(d), "rel": float(d.mean() / lb[i].mean())}
    return out


def loss_table(models: dict, comparisons: list[dict]) -> list[dict]:
    """One row per timestep group: each model's held-out loss, and the progressive model's change against
    base and control (relative, with the interval of the paired difference)."""
    if not models:
        return []
    groups = next((r.get("loss_group_index") for r in models.values() if r.get("loss_group_index")), None) or sorted(
        int(g) for g in next(iter(models.values())).get("loss_groups", {})
    )
    pair = {(c["model"], c["against"]): c.get("loss_groups", {}) for c in comparisons}
    out = []
    for g in groups:
        row = {"group": g, **{m: models[m].get("loss_groups", {}).get(str(g)) for m in SAMPLE_MODELS if m in models}}
        for other in ("base", *CONTROLS):
            ch = pair.get(("progressive", other), {}).get(str(g))
            if ch:
                row[f"vs_{other}"] = ch
        out.append(row)
    return out


class _Ticks:
    """Progress as (done, total) calls."""

    def __init__(self, total: int, progress):
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, k: int = 1) -> None:
        self.done += k
        if self.progress:
            self.progress(self.done, self.total)


class FidSampler:
    """Sample metrics of models: ``n`` samples with ``steps`` respaced steps, their features, and FID, KID,
    precision and recall against the dataset's reference (the extractor and statistics are made once, and
    cached across runs)."""

    def __init__(self, run, diffusion, n: int, steps: int, inception, device, log):
        from core.evaluation import features as F
        from core.evaluation import metrics as M
        from core.training.data import load_dataset

        self.run, self.diffusion, self.n, self.steps, self.device, self.log = run, diffusion, n, steps, device, log
        self.cfg = cfg = run.config
        data = load_dataset(cfg, split="all")
        self.ext, self.ext_info = F.make_extractor(cfg, data, run.path.parent, inception, device, log)
        self.ref = F.reference_stats(
            self.ext, self.ext_info, data, cfg, run.path.parent, cfg["eval"]["ref_n"] or None, device
        )
        self.ref_stats = M.RefStats.of(self.ref["mu"], self.ref["sigma"])
        self.ticks = -(-n // cfg["eval"]["batch_size"]) * steps
        self.seed = cfg["seed"] + 1000  # every model's samples start from the same noise

    def features(self, model, which: str, tick) -> np.ndarray:
        from core.evaluation import features as F
        from core.model.sampling import sample_images, save_grid

        cfg, m, s = self.cfg, self.cfg["model"], self.cfg["sample"]
        self.log(f"{which}: sampling {self.n} images with {self.steps} steps for FID/KID")
        imgs = sample_images(
            model,
            self.diffusion,
            self.n,
            image_size=m["image_size"],
            channels=m["in_channels"],
            steps=self.steps,
            batch_size=cfg["eval"]["batch_size"],
            seed=self.seed,
            method=s["method"],
            device=self.device,
            progress=tick,
            channels_last=s["channels_last"],
        )
        save_grid(imgs[:64], self.run.samples() / f"eval_{which}.png")
        return F.features(self.ext, imgs, device=self.device)

    def summary(self, feats: np.ndarray) -> dict:
        from core.evaluation import metrics as M

        s = M.summarise(feats, self.ref_stats, self.ref["feats"], self.cfg["eval"]["bootstrap"], self.cfg["seed"])
        return {
            **s,
            "fid_kind": self.ext_info["kind"],
            "fid_extractor": self.ext_info["id"],
            "fid_n": len(feats),
            "fid_steps": self.steps,
            "fid_ref_n": self.ref["n"],
            "sample_seed": self.seed,
        }

    def differences(self, fa: np.ndarray, fb: np.ndarray, paired: bool) -> dict:
        """{"fid": ..., "kid": ...}: a - b with its interval and verdict."""
        from core.evaluation import metrics as M

        out = {}
        for metric in ("fid", "kid"):
            d = M.difference(
                fa,
                fb,
                self.ref_stats,
                self.ref["feats"],
                metric,
                paired,
                self.cfg["eval"]["bootstrap"],
                self.cfg["seed"],
            )
            out[metric] = {**d, "verdict": M.verdict(d)}
        return out


def compare_runs(run, which: str, other, other_which: str, inception=None, device="cpu", log=print) -> dict:
    """``which`` of ``run`` against ``other_which`` of ``other``, both evaluated (same extractor and n), on FID
    and KID with intervals: paired when both drew their samples from the same noise (same seed and n)."""
    from core.errors import UserError

    ra, rb = load_eval(run)["models"][which], load_eval(other)["models"][other_which]
    if ra.get("fid_extractor") != rb.get("fid_extractor") or ra.get("fid_steps") != rb.get("fid_steps"):
        raise UserError(
            f"{run.name} and {other.name} were evaluated with different feature extractors or sampling "
            f"steps ({ra.get('fid_extractor')}, {ra.get('fid_steps')} vs {rb.get('fid_extractor')}, "
            f"{rb.get('fid_steps')}); evaluate both the same way"
        )
    sampler = FidSampler(run, None, ra["fid_n"], ra["fid_steps"], inception, device, log)
    fa, fb = np.load(run.eval_array("features", which)), np.load(other.eval_array("features", other_which))
    paired = ra.get("sample_seed") == rb.get("sample_seed") and len(fa) == len(fb)
    return {
        "model": which,
        "against": f"{other.name}:{other_which}",
        "macs_ratio": ra["macs"] / rb["macs"],
        "primary": run.config["eval"]["primary"],
        **sampler.differences(fa, fb, paired),
    }
