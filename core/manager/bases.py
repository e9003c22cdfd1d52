"""Runs that start from a trained base: an imported improved-diffusion checkpoint or diffusers ``UNet2DModel``
folder, or a fork of another run; and a run's models written back out as diffusers folders (``export_run``).

Either way the new run's stage 1 is finished before its first job: ``models/base.pt`` (EMA weights, the arch,
the step, and where it came from) and ``checkpoints/base.pt`` (what the control continues from) exist, and
``meta.json`` records the base's origin, sha256 and size (a run that trains its own stage 1 records
``{"origin": "trained", "sha256", "bytes"}`` when it finishes, ``runs.record_base``):

    meta["base"] = {"origin": "import", "file": PATH, "file_sha256": ..., "format": "improved-diffusion",
                    "sha256": sha256 of models/base.pt, "bytes": its size}
    meta["base"] = {"origin": "import", "file": DIR, "file_sha256": sha256 of its safetensors file (of the shards'
                    sha256s, one a line, for a sharded model), "format": "diffusers", "sha256", "bytes"}
                   (the run's config says model.family = diffusers, and the settings its weights and scheduler fix)
    meta["base"] = {"origin": "fork", "run": PARENT, "sha256": ..., "bytes": ...}   (and meta["parent"] = PARENT)
    meta["base"] = {"origin": "fork", "run": PARENT, "step": STEP, "sha256": ..., "bytes": ...}   a fork of
                   PARENT@STEP: the milestone that PARENT's stage 1 kept at STEP (train.keep), EMA weights and
                   training state

A fork shares its parent's stage 1, so the sections stage 1 depends on (model, diffusion, train, data) cannot
change; anything later (schedule, prune, fine-tune, control, sample, eval, seed) can. A fork's base files are
copies of the parent's, never hard links: a file changed in place (not replaced) in one run changes no other.
``fork`` refuses a parent whose base no longer matches its record, and ``show`` says so.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

from core.errors import UserError
from core.runs import (
    Run,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    base_changed,
    create_run,
    file_sha256,
    open_run,
)

SHARED_SECTIONS = ("model", "diffusion", "train", "data")  # what stage 1 depends on: a fork keeps them


def is_import_source(base: str) -> bool:
    """Whether ``--base`` names a model to import (a checkpoint file, or a diffusers save_pretrained folder) rather
    than a run to fork."""
    from core.model.unet2d import is_folder

    return Path(base).expanduser().is_file() or is_folder(base)


def base_sha256(run: Run) -> Optional[str]:
    """sha256 of the run's stage-1 model (recorded at import/fork time, else computed), None if it has none."""
    recorded = (run.meta.get("base") or {}).get("sha256")
    if recorded:
        return recorded
    path = run.model("base")
    if not path.is_file():
        return None
    from core.store import open_store

    rows = [a for a in open_store(run.path.parent).artifacts(run.name) if a["path"] == "models/base.pt"]
    if rows and rows[-1]["bytes"] == path.stat().st_size:  # recorded by the job that wrote it
        return rows[-1]["sha256"]
    return file_sha256(path)


def base_origin(run: Run) -> str:
    """Where the run's stage 1 came from: trained, imported, shipped base NAME, or fork of PARENT."""
    base = run.meta.get("base") or {}
    if base.get("origin") == "import":
        return "imported"
    if base.get("origin") == "shipped":
        return f"shipped base {base.get('name')} ({base.get('steps'):,} steps)"
    if base.get("origin") == "fork" or run.meta.get("parent"):
        at = f"@{base['step']}" if base.get("step") is not None else ""
        return f"fork of {base.get('run') or run.meta.get('parent')}{at}"
    return "trained"


# -- import ------------------------------------------------------------------------------------------------
def import_config(cfg: dict, overrides: Iterable[str] = ()) -> dict:
    """An improved-diffusion model's settings on top of ``cfg``: GroupNorm(32) and t * 1000/T (their defaults),
    then the user's ``overrides`` (-S still wins)."""
    from core import config as C

    cfg["model"]["norm_groups"] = 32
    cfg["model"]["rescale_timesteps"] = True
    return C.apply_overrides(cfg, overrides)


def import_base(file, cfg: dict, name: Optional[str], runs_dir, log: Callable[[str], None] = print) -> Run:
    """A new run whose finished stage 1 is improved-diffusion checkpoint ``file`` converted to this project's
    UNet (or, for a diffusers folder, ``import_diffusers``). The file is read and converted before the run folder
    exists: a misfit writes nothing."""
    from core.config import model_arch
    from core.model.iddpm import import_model
    from core.model.unet2d import is_folder

    if is_folder(file):
        return import_diffusers(file, cfg, name, runs_dir, log)

    arch = model_arch(cfg)
    model = import_model(file, arch, cfg["preset"] or "this")
    digest = file_sha256(Path(file).expanduser())
    run = create_run(cfg, name, runs_dir)
    try:
        write_base(
            run,
            cfg,
            arch,
            model.state_dict(),
            {
                "origin": "import",
                "file": str(Path(file).resolve()),
                "file_sha256": digest,
                "format": "improved-diffusion",
            },
        )
    except BaseException:
        discard_run(run)
        raise
    log(
        f"run {run.name}: stage 1 imported from {file} (sha256 {digest[:12]}; improved-diffusion layout, "
        f"t * {arch['time_scale']:g} fed to the network)"
        if "time_scale" in arch
        else f"run {run.name}: stage 1 imported from {file} (sha256 {digest[:12]})"
    )
    return run


def diffusers_config(cfg: dict, arch: dict, diffusion: dict) -> dict:
    """``cfg`` with the model and diffusion settings a diffusers folder fixes (its config.json and scheduler).
    A setting the user asked for (file or -S: one that differs from the preset's) that contradicts them is refused;
    ``model.dropout`` (which the weights do not fix) stays the user's if asked for, else is the folder's."""
    from core import config as C

    ref = C.preset(cfg["preset"] or "tiny")
    for section, fixed in (("model", arch), ("diffusion", diffusion)):
        for key, value in fixed.items():
            asked, default = cfg[section].get(key), ref[section].get(key)
            if key == "dropout" and asked != default:
                continue
            if asked not in (value, default) and (section, key) not in IMPORT_SET:
                raise UserError(f"{section}.{key}={asked} was asked, but the diffusers model has {value}")
            cfg[section][key] = value
    return C.apply_overrides(cfg, ())


IMPORT_SET = {("model", "norm_groups"), ("model", "rescale_timesteps")}  # what import_config sets for iddpm files


def import_diffusers(folder, cfg: dict, name: Optional[str], runs_dir, log: Callable[[str], None] = print) -> Run:
    """A new run whose finished stage 1 is a diffusers ``UNet2DModel`` folder (safetensors weights, its scheduler's
    DDPM settings) as this project's UNet; every misfit is one line before the run folder exists."""
    import hashlib

    from core.config import model_arch
    from core.model.unet2d import load_folder

    model, arch, diffusion, files = load_folder(folder)
    cfg = diffusers_config(cfg, arch, diffusion)
    digests = [file_sha256(f) for f in files["weights"]]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
    run = create_run(cfg, name, runs_dir)
    origin = {"origin": "import", "file": str(Path(folder).expanduser().resolve()), "file_sha256": digest}
    try:
        write_base(run, cfg, model_arch(cfg), model.state_dict(), {**origin, "format": "diffusers"})
    except BaseException:
        discard_run(run)
        raise
    d = cfg["diffusion"]
    params = sum(p.numel() for p in model.parameters())
    log(
        f"run {run.name}: stage 1 imported from {folder} (diffusers UNet2DModel, {params / 1e6:.1f}M params, sha256 "
        f"{digest[:12]}; {d['noise_schedule']} betas, T = {d['steps']}, epsilon prediction, "
        + ("learned variance)" if cfg["model"]["learn_sigma"] else f"fixed {d['fixed_variance']} variance)")
    )
    return run


def write_base(run: Run, cfg: dict, arch: dict, state: dict, origin: dict) -> None:
    """models/base.pt and checkpoints/base.pt of a finished stage 1 that was not trained here."""
    import torch

    step = cfg["train"]["steps"]  # the stage is finished by definition
    atomic_torch_save(
        {"state": state, "step": step, "arch": arch, "stage": "base", "imported": origin}, run.model("base")
    )
    # what the control continues from: weights = EMA = the imported model, a fresh optimiser
    atomic_torch_save(
        {
            "model": state,
            "ema": state,
            "opt": None,
            "step": step,
            "rng": {"torch": torch.get_rng_state(), "cuda": None},
            "spec": {"name": "base", "imported": True},
        },
        run.ckpt("base"),
    )
    _record(run, {**origin, "sha256": file_sha256(run.model("base"))})


# -- fork --------------------------------------------------------------------------------------------------
def fork_config(parent: Run, overrides: Iterable[str], step: Optional[int] = None) -> dict:
    """The parent's config with ``overrides``; changing what stage 1 depends on is refused. A fork of milestone
    ``step`` has a stage 1 of ``step`` steps that keeps no milestones of its own."""
    from core import config as C

    before = parent.config  # a completed copy, as every read of it
    cfg = C.apply_overrides(copy.deepcopy(before), overrides)
    for section in SHARED_SECTIONS:
        if cfg.get(section) != before.get(section):
            keys = sorted(
                k for k in set(cfg[section]) | set(before[section]) if cfg[section].get(k) != before[section].get(k)
            )
            raise UserError(
                f"a fork shares {parent.name}'s stage 1, so {section}.{keys[0]} cannot change; "
                "start a new run (stepadapt run) for another base"
            )
    if step is not None:
        cfg["train"].update(steps=step, keep=[])
    return cfg


def check_parent_base(parent: Run) -> str:
    """The parent's finished base's sha256, or a one-line error (missing, changed since its sha256 and size were
    recorded, unfinished)."""
    from core.manager.stages import base

    path = parent.model("base")
    if not path.is_file():
        raise UserError(
            f"run {parent.name} has no base model ({path}); train it first (stepadapt resume {parent.name})"
        )
    digest = file_sha256(path)
    changed = base_changed(parent, digest)
    if changed:
        raise UserError(f"run {parent.name}'s base is not the one it finished with ({changed}); refusing to fork it")
    if base.pending(parent):
        from core.method.fields import artifact_step

        raise UserError(
            f"run {parent.name}'s base is unfinished (step {artifact_step(path)} of "
            f"{parent.config['train']['steps']}); finish it first (stepadapt resume {parent.name})"
        )
    if not parent.ckpt("base").is_file():
        raise UserError(
            f"run {parent.name} has no stage-1 checkpoint ({parent.ckpt('base')}), which the fork's "
            "control continues from"
        )
    return digest


def split_milestone(name: str) -> tuple[str, Optional[int]]:
    """``RUN@STEP`` -> (RUN, STEP), a milestone of RUN's stage 1; ``RUN`` -> (RUN, None)."""
    head, at, tail = name.rpartition("@")
    if not at:
        return name, None
    if not tail.isdigit() or not head:
        raise UserError(f"bad base {name!r}: RUN@STEP takes a step number after @ (e.g. base@1500)")
    return head, int(tail)


def check_milestone(parent: Run, step: int) -> tuple[Path, Path, str]:
    """Milestone ``step`` of ``parent``'s stage 1: its model and state files and the model's sha256, or a one-line
    error naming the milestones there are."""
    from core.method.fields import artifact_step
    from core.training.spec import milestone_paths

    model, state = milestone_paths(parent.milestones(), step)
    if not model.is_file() or not state.is_file():
        kept = parent.milestone_steps()
        raise UserError(
            f"run {parent.name} kept no milestone at step {step} ("
            + (f"kept: {', '.join(map(str, kept))}" if kept else "none kept; see train.keep")
            + ")"
        )
    if artifact_step(model) != step or artifact_step(state) != step:
        raise UserError(f"run {parent.name}'s milestone {step} is unreadable or not from step {step}: {model}")
    return model, state, file_sha256(model)


def fork_run(
    parent_name: str, name: Optional[str], overrides: Iterable[str], runs_dir, log: Callable[[str], None] = print
) -> Run:
    """A new run sharing ``parent_name``'s finished stage 1 (config from the parent, with ``overrides``; its base
    files copied and checked against the parent's sha256); with ``PARENT@STEP``, the stage 1 that the parent kept
    at milestone STEP."""
    parent_name, step = split_milestone(parent_name)
    parent = open_run(parent_name, runs_dir)
    cfg = fork_config(parent, overrides, step)
    if step is None:
        model, state, digest = parent.model("base"), parent.ckpt("base"), check_parent_base(parent)
    else:
        model, state, digest = check_milestone(parent, step)
    run = create_run(cfg, name, runs_dir, parent=parent.name)
    try:
        for src, dst in ((model, run.model("base")), (state, run.ckpt("base"))):
            _copy(src, dst)
        if file_sha256(run.model("base")) != digest:
            raise UserError(f"the fork's base differs from {parent.name}'s after copying; disk trouble?")
        _copy_base_curve(parent, run, step)
        _record(
            run, {"origin": "fork", "run": parent.name, **({} if step is None else {"step": step}), "sha256": digest}
        )
    except BaseException:
        discard_run(run)
        raise
    at = "" if step is None else f" at step {step}"
    log(f"run {run.name}: a fork of {parent.name}{at}, sharing its stage 1 (base sha256 {digest[:12]})")
    return run


def _copy_base_curve(parent: Run, run: Run, step: Optional[int]) -> None:
    """The base's training curve, for the report (up to the milestone of a milestone's fork)."""
    import json

    from core.runs import read_jsonl
    from core.store import open_store

    if parent.metrics("base").is_file():
        if step is None:
            _copy(parent.metrics("base"), run.metrics("base"))
        else:
            lines = [r for r in read_jsonl(parent.metrics("base")) if r.get("step", 0) <= step]
            run.metrics("base").parent.mkdir(parents=True, exist_ok=True)
            run.metrics("base").write_text("".join(json.dumps(r) + "\n" for r in lines))
    store = open_store(run.path.parent)
    rows = [
        {k: v for k, v in r.items() if k != "id"} | {"run": run.name, "job": None}
        for r in store.metrics(parent.name, stage="base")
        if step is None or (r.get("step") or 0) <= step
    ]
    if rows:
        store.log_metrics(rows)


def _copy(src: Path, dst: Path) -> None:
    """``dst`` a copy of ``src``, written atomically (a full disk is one line). Never a hard link: a file changed
    in place in one run would change the other's too."""
    with open(src, "rb") as f:
        atomic_write_bytes(dst, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def _record(run: Run, base: dict) -> None:
    """The base's origin in meta.json, and its files as the run's artifacts in the store."""
    from core.store import open_store

    meta = dict(run.meta)
    meta["base"] = {**base, "bytes": run.model("base").stat().st_size}
    atomic_write_json(meta, run.meta_file)
    store = open_store(run.path.parent)
    for path, kind in ((run.model("base"), "model"), (run.ckpt("base"), "checkpoint")):
        store.add_artifact(
            {
                "run": run.name,
                "job": None,
                "path": str(path.relative_to(run.path)),
                "kind": kind,
                "sha256": base["sha256"] if kind == "model" else file_sha256(path),
                "bytes": path.stat().st_size,
            }
        )


def discard_run(run: Run) -> None:
    """Remove a run that could not be made whole (its folder and its row)."""
    from core.store import open_store

    shutil.rmtree(run.path, ignore_errors=True)
    open_store(run.path.parent).forget_run(run.name)


# -- export ------------------------------------------------------------------------------------------------
def export_run(run: Run, dest, log: Callable[[str], None] = print) -> dict:
    """Every model of ``run`` as a diffusers folder under ``dest``: ``base``, the controls it has, and one folder per
    group of its progressive model, with ``scheduler_config.json``, ``routing.json`` (each group's timesteps and
    folder) and a README.md that names the models a ``UNet2DModel`` cannot express, and why. ``dest`` is new or
    empty, and appears whole or not at all. Returns the routing table."""
    import os
    import tempfile

    from core.method.artifacts import load_progressive, load_unet, read_artifact
    from core.model.to_diffusers import export_unet, scheduler_config
    from core.names import CONTROLS

    dest, cfg = Path(dest).expanduser(), run.config
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} exists and is not empty; export into a new folder")
    if not run.model("base").is_file():
        raise UserError(f"run {run.name} has no base model yet ({run.model('base')}); nothing to export")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    table = {
        "run": run.name,
        "family": cfg["model"].get("family", "iddpm"),
        "num_train_timesteps": cfg["diffusion"]["steps"],
        "scheduler": "scheduler_config.json",
        "models": {},
        "groups": [],
    }

    def one(model, arch: dict, folder: str) -> dict:
        res = export_unet(model, arch, cfg["diffusion"], tmp / folder)
        if "reason" in res:
            log(f"{folder}: not exported: {res['reason']}")
            return {"folder": None, "reason": res["reason"]}
        log(f"{folder}: exported (max |ours - diffusers| = {res['max_abs_diff']:.1e})")
        return {"folder": folder, "max_abs_diff": res["max_abs_diff"]}

    try:
        for name in ("base", *CONTROLS):
            path = run.model(name)
            if path.is_file():
                table["models"][name] = one(load_unet(path), read_artifact(path)["arch"], name)
        prog = run.model("progressive")
        if prog.is_file():
            model, art = load_progressive(prog), read_artifact(prog, what="progressive model")
            group_of = [int(g) for g in art["group_of"]]
            for g in sorted(int(k) for k in art["groups"]):
                entry = one(model.models[str(g)], art["groups"][g]["arch"], run.group_stage(g))
                table["groups"].append({"group": g, "timesteps": _ranges(group_of, g), **entry})
        else:
            log(f"run {run.name} has no progressive model yet ({prog}): no group folders")
        learn_sigma = cfg["model"]["learn_sigma"]
        atomic_write_json(
            {"_class_name": "DDPMScheduler", **scheduler_config(cfg["diffusion"], learn_sigma)},
            tmp / "scheduler_config.json",
        )
        atomic_write_json(table, tmp / "routing.json")
        (tmp / "README.md").write_text(export_readme(table))
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return table


def _ranges(group_of: list[int], g: int) -> list[list[int]]:
    """The timesteps routed to group ``g`` as inclusive [first, last] runs."""
    out: list[list[int]] = []
    for t, h in enumerate(group_of):
        if h != g:
            continue
        if out and out[-1][1] == t - 1:
            out[-1][1] = t
        else:
            out.append([t, t])
    return out


def export_readme(table: dict) -> str:
    """What an export folder holds, which models it lacks and why, and how to sample with its folders."""
    rows = [(k, v) for k, v in table["models"].items()] + [(f"group {e['group']}", e) for e in table["groups"]]
    done = [f"`{v['folder']}/`" for _, v in rows if v["folder"]]
    lines = [
        f"# Run {table['run']} as diffusers models",
        "",
        "Each folder is a `UNet2DModel` (`UNet2DModel.from_pretrained(folder)`): " + (", ".join(done) or "none") + ".",
        "`scheduler_config.json` is the run's DDPM process (`DDPMScheduler.from_pretrained(this folder)`);",
        "`routing.json` says which group's folder denoises which timesteps (inclusive ranges of training steps).",
        "",
    ]
    missing = [(n, v["reason"]) for n, v in rows if not v["folder"]]
    if missing:
        lines += ["Not exported, because a `UNet2DModel` config cannot express them:", ""]
        lines += [f"- {n}: {why}" for n, why in missing] + [""]
    lines += ["Sampling with the progressive model outside stepadapt: see stepadapt's docs/diffusers.md.", ""]
    return "\n".join(lines)
