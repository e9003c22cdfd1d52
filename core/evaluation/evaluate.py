"""Evaluation of a run (its ``eval.json``): FID of samples, params and MACs averaged over timesteps, and the
held-out loss per timestep group, for the base and the progressive model (the paper's Table 1)."""
from __future__ import annotations

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

    from core.training.data import load_dataset
    from core.model.diffusion import create_diffusion
    from core.errors import UserError
    from core.method.schedule import run_schedule
    from core.model.macs import count, progressive_cost
    from core.method.artifacts import load_progressive
    from core.runs import atomic_write_json
    from core.model.sampling import sample_images, save_grid
    from core.method.artifacts import load_unet

    cfg = run.config
    m, e, s = cfg["model"], cfg["eval"], cfg["sample"]
    n = e["fid_n"] if n is None else n
    steps = e["steps"] if steps is None else steps
    fid = e["fid"] if fid is None else fid
    if fid and n < 2:
        raise UserError(f"FID needs at least 2 samples (--n {n})")
    if not 1 <= steps <= cfg["diffusion"]["steps"]:
        raise UserError(f"--steps must be in [1, {cfg['diffusion']['steps']}]")
    present = [w for w in models if run.model(w).exists()]
    if not present:
        raise UserError(f"run {run.name} has no trained model to evaluate ({', '.join(models)}); "
                        f"train it first (stepadapt run / stepadapt resume {run.name})")
    path = run.path / "eval.json"
    out = load_eval(run)
    out.setdefault("models", {})
    sched = run_schedule(run)
    diffusion = create_diffusion(cfg)
    images = eval_images(cfg, e["loss_images"], seed=cfg["seed"])
    ext = ref = None
    if fid:
        from core.evaluation import fid as F

        data = load_dataset(cfg, split="all")
        ext, ext_info = F.make_extractor(cfg, data, run.path.parent, inception, device, log)
        ref = F.reference_stats(ext, ext_info, data, cfg, run.path.parent, e["ref_n"] or None, device)
    total = len(present) * (2 + (-(-n // e["batch_size"]) * steps if fid else 0))
    done = [0]

    def tick(k=1):
        done[0] += k
        if progress:
            progress(done[0], total)

    groups_ft = len(sched.nonempty) * cfg["finetune"]["steps"]
    for which in present:
        old = out["models"].get(which, {})
        if which == "progressive":
            model = load_progressive(run.model("progressive"), device)
            cost = progressive_cost(model, m["image_size"], m["in_channels"], steps)
            row = {"params": cost["avg_all"]["params"], "macs": cost["avg_all"]["macs"],
                   "macs_sampled": cost["avg_sampled"]["macs"], "attn_macs": cost["avg_all"]["attn_macs"],
                   "params_total": sum(p.numel() for p in model.parameters()),
                   "train_steps": cfg["train"]["steps"] + groups_ft}
        else:
            model = load_unet(run.model("base"), device)
            c = count(model, m["image_size"], m["in_channels"])
            row = {"params": c["params"], "macs": c["macs"], "macs_sampled": c["macs"], "attn_macs": c["attn_macs"],
                   "params_total": c["params"], "train_steps": cfg["train"]["steps"]}
        row.update(loss_report(model, diffusion, images, sched, e["loss_draws"], device))
        tick()
        if fid:
            same = (old.get("fid_n"), old.get("fid_steps"), old.get("fid_extractor")) == (n, steps, ext_info["id"])
            if same and not force and old.get("fid") is not None and old.get("model_mtime") == \
                    run.model(which).stat().st_mtime:
                row.update({k: old[k] for k in old if k.startswith("fid")})
                log(f"{which}: FID reused from eval.json ({old['fid']:.3f})")
                tick(-(-n // e["batch_size"]) * steps)
            else:
                log(f"{which}: sampling {n} images with {steps} steps for FID")
                imgs = sample_images(model, diffusion, n, image_size=m["image_size"], channels=m["in_channels"],
                                     steps=steps, batch_size=e["batch_size"], seed=cfg["seed"] + 1000,
                                     method=s["method"], device=device, progress=tick,
                                     channels_last=s["channels_last"])
                save_grid(imgs[:64], run.samples() / f"eval_{which}.png")
                row.update({"fid": F.fid_from_features(F.features(ext, imgs, device=device), ref),
                            "fid_kind": ext_info["kind"], "fid_extractor": ext_info["id"], "fid_n": n,
                            "fid_steps": steps, "fid_ref_n": ref["n"], "fid_grid": f"samples/eval_{which}.png"})
        row["model_mtime"] = run.model(which).stat().st_mtime
        tick()
        out["models"][which] = row
        log(f"{which}: {row['params'] / 1e6:.3f} M params, {row['macs'] / 1e9:.4f} GMACs avg over T, "
            f"held-out loss {row['loss']:.5f}" + (f", {row['fid_kind'].split(' (')[0]} {row['fid']:.3f}"
                                                   if row.get("fid") is not None else ""))
    out.update({"sample_steps": steps, "num_timesteps": sched.num_timesteps, "loss_images": len(images),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    if fid:
        out["fid_extractor"] = {k: v for k, v in ext_info.items() if k != "path"}
    atomic_write_json(out, path)
    return out
