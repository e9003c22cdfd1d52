"""Evaluation of a run (its ``eval.json``): FID of samples, params and MACs averaged over timesteps, and the
held-out loss per timestep group, for the base and the progressive model (the paper's Table 1)."""
from __future__ import annotations

import shlex
from core.evaluation.losses import eval_images, loss_report


def load_eval(run) -> dict:
    """``RUN/eval.json``, or {} when the run has not been evaluated (or the file is unreadable)."""
    from core.runs import read_json

    return read_json(run.eval_file()) or {}


def evaluate_run(run, device="cpu", log=print, progress=None, models=("base", "progressive"), n=None,
                 steps=None, inception=None, fid=None, force=False) -> dict:
    """Evaluate the run's base and progressive models, as the paper's Table 1: FID of ``n`` samples drawn
    with ``steps`` respaced steps, params and MACs averaged over timesteps, and held-out loss per group.
    Merged into ``RUN/eval.json`` (an FID computed with the same n, steps and extractor is reused)."""
    import datetime as _dt

    from core.method.schedule import run_schedule
    from core.model.diffusion import create_diffusion
    from core.runs import atomic_write_json

    cfg = run.config
    e = cfg["eval"]
    n, steps, fid = _settings(cfg, n, steps, fid)
    present = _present(run, models)
    out = load_eval(run)
    out.setdefault("models", {})
    sched, diffusion = run_schedule(run), create_diffusion(cfg)
    images = eval_images(cfg, e["loss_images"], seed=cfg["seed"])
    sampler = FidSampler(run, diffusion, n, steps, inception, device, log) if fid else None
    tick = _Ticks(len(present) * (2 + (sampler.ticks if sampler else 0)), progress)
    for which in present:
        model = _load(run, which, device)
        row = {**model_cost(model, which, cfg, steps, sched),
               **loss_report(model, diffusion, images, sched, e["loss_draws"], device)}
        tick()
        if sampler:
            row.update(sampler.fid(model, which, out["models"].get(which, {}), force, tick))
        row["model_mtime"] = run.model(which).stat().st_mtime
        tick()
        out["models"][which] = row
        log(f"{which}: {row['params'] / 1e6:.3f} M params, {row['macs'] / 1e9:.4f} GMACs avg over T, "
            f"held-out loss {row['loss']:.5f}" + (f", {row['fid_kind'].split(' (')[0]} {row['fid']:.3f}"
                                                   if row.get("fid") is not None else ""))
    out.update({"sample_steps": steps, "num_timesteps": sched.num_timesteps, "loss_images": len(images),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    if sampler:
        out["fid_extractor"] = {k: v for k, v in sampler.ext_info.items() if k != "path"}
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
        raise UserError(f"--steps must be in [1, {cfg['diffusion']['steps']}]")
    return n, steps, fid


def _present(run, models) -> list[str]:
    from core.errors import UserError

    present = [w for w in models if run.model(w).exists()]
    if not present:
        raise UserError(f"run {run.name} has no trained model to evaluate ({', '.join(models)}); "
                        f"train it first (stepadapt run / stepadapt resume {shlex.quote(run.name)})")
    return present


def _load(run, which: str, device):
    from core.method.artifacts import load_progressive, load_unet

    path = run.model(which)
    return load_progressive(path, device) if which == "progressive" else load_unet(path, device)


def model_cost(model, which: str, cfg: dict, steps: int, sched) -> dict:
    """Params and MACs per sample averaged over all T and over the ``steps`` sampled steps (Table 1), and the
    training steps behind the model (the progressive model: stage 1 plus every group's fine-tune)."""
    from core.model.macs import count, progressive_cost

    m = cfg["model"]
    if which == "progressive":
        cost = progressive_cost(model, m["image_size"], m["in_channels"], steps)
        return {"params": cost["avg_all"]["params"], "macs": cost["avg_all"]["macs"],
                "macs_sampled": cost["avg_sampled"]["macs"], "attn_macs": cost["avg_all"]["attn_macs"],
                "params_total": sum(p.numel() for p in model.parameters()),
                "train_steps": cfg["train"]["steps"] + len(sched.nonempty) * cfg["finetune"]["steps"]}
    c = count(model, m["image_size"], m["in_channels"])
    return {"params": c["params"], "macs": c["macs"], "macs_sampled": c["macs"], "attn_macs": c["attn_macs"],
            "params_total": c["params"], "train_steps": cfg["train"]["steps"]}


class _Ticks:
    """Progress as (done, total) calls."""

    def __init__(self, total: int, progress):
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, k: int = 1) -> None:
        self.done += k
        if self.progress:
            self.progress(self.done, self.total)


class FidSampler:
    """FID of a model: ``n`` samples with ``steps`` respaced steps against the dataset's reference statistics
    (the feature extractor and the statistics are made once, and cached across runs)."""

    def __init__(self, run, diffusion, n: int, steps: int, inception, device, log):
        from core.evaluation import fid as F
        from core.training.data import load_dataset

        self.run, self.diffusion, self.n, self.steps, self.device, self.log = run, diffusion, n, steps, device, log
        self.cfg = cfg = run.config
        data = load_dataset(cfg, split="all")
        self.ext, self.ext_info = F.make_extractor(cfg, data, run.path.parent, inception, device, log)
        self.ref = F.reference_stats(self.ext, self.ext_info, data, cfg, run.path.parent,
                                     cfg["eval"]["ref_n"] or None, device)
        self.ticks = -(-n // cfg["eval"]["batch_size"]) * steps

    def fid(self, model, which: str, old: dict, force: bool, tick) -> dict:
        """The ``fid*`` fields of the model's row; an FID of the same model, n, steps and extractor is reused."""
        same = (old.get("fid_n"), old.get("fid_steps"), old.get("fid_extractor")) == \
            (self.n, self.steps, self.ext_info["id"])
        if same and not force and old.get("fid") is not None and \
                old.get("model_mtime") == self.run.model(which).stat().st_mtime:
            self.log(f"{which}: FID reused from eval.json ({old['fid']:.3f})")
            tick(self.ticks)
            return {k: old[k] for k in old if k.startswith("fid")}
        return self._measure(model, which, tick)

    def _measure(self, model, which: str, tick) -> dict:
        from core.evaluation import fid as F
        from core.model.sampling import sample_images, save_grid

        cfg, m, s = self.cfg, self.cfg["model"], self.cfg["sample"]
        self.log(f"{which}: sampling {self.n} images with {self.steps} steps for FID")
        imgs = sample_images(model, self.diffusion, self.n, image_size=m["image_size"], channels=m["in_channels"],
                             steps=self.steps, batch_size=cfg["eval"]["batch_size"], seed=cfg["seed"] + 1000,
                             method=s["method"], device=self.device, progress=tick, channels_last=s["channels_last"])
        save_grid(imgs[:64], self.run.samples() / f"eval_{which}.png")
        return {"fid": F.fid_from_features(F.features(self.ext, imgs, device=self.device), self.ref),
                "fid_kind": self.ext_info["kind"], "fid_extractor": self.ext_info["id"], "fid_n": self.n,
                "fid_steps": self.steps, "fid_ref_n": self.ref["n"], "fid_grid": f"samples/eval_{which}.png"}
