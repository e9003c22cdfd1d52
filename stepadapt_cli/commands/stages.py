"""Each stage of the method on its own: train, schedule, prune, finetune, sample."""

from __future__ import annotations

import shlex
import sys

import click

from core.errors import UserError
from core.manager.lifecycle import tracked_stage
from core.names import ALLOCATIONS, PRUNE_METHODS, SAMPLE_MODELS, SAMPLERS, SCHEDULE_KINDS

from .. import render
from ..common import (
    check_name,
    device_option,
    emit_json,
    json_option,
    overrides_option,
    runs_dir_option,
    set_threads,
    steps_option,
)


@click.command(short_help="Stage 1: train the base denoiser on all timesteps.")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", default=None, help="Model preset (default: the config file's, else tiny).")
@click.option("--data", "data_spec", default=None, help="digits | cifar10[:ROOT] | folder:PATH | PATH.")
@click.option("--download", is_flag=True, help="Allow downloading CIFAR-10 if it is missing.")
@steps_option("train", "Training steps (total, also when resuming).")
@click.option(
    "--name",
    "run_name",
    default=None,
    callback=check_name,
    help="Run name, as for `stepadapt run` (default: PRESET-DATE-TIME).",
)
@runs_dir_option
@click.option("--resume", is_flag=True, help="Continue the run named by --name from its checkpoint.")
@device_option
@click.option("--seed", type=int, default=None, help="Seed (default: the config's).")
@overrides_option
def train(config_file, preset, data_spec, download, steps, run_name, runs_dir, resume, device, seed, overrides):
    """Stage 1: train the base denoiser on all timesteps."""
    from core import config as C
    from core.config import model_arch
    from core.runs import create_run, open_run, record_base, run_lock

    if resume:
        if not run_name:
            raise UserError("--resume needs --name NAME")
        if config_file or preset or overrides or data_spec or seed is not None:
            raise UserError(
                "--resume continues a run with its saved config; only --train-steps and --device may change"
            )
        run = open_run(run_name, runs_dir)
        cfg = run.config
        if steps is not None:
            cfg["train"]["steps"] = steps
    else:
        extra = list(overrides)
        for key, val in (
            ("data.spec", data_spec),
            ("data.download", "true" if download else None),
            ("train.steps", steps),
            ("seed", seed),
        ):
            if val is not None:
                extra.append(f"{key}={val}")
        cfg = C.resolve(preset, config_file, extra)
    # torch and the training code only once the config holds: bad input is one line in a fraction of a second
    from core.manager.stages.base import base_spec, record_if_finished
    from core.method.fields import artifact_step
    from core.model.diffusion import create_diffusion
    from core.model.unet import build_unet
    from core.training.data import load_dataset
    from core.training.devices import pick_device
    from core.training.loop import train as run_train

    dev = pick_device(device)
    set_threads(cfg)
    data = load_dataset(cfg)  # before creating the run: a missing dataset leaves nothing behind
    if not resume:
        run = create_run(cfg, run_name, runs_dir)
    spec = base_spec(run, cfg)
    with run_lock(run, "stepadapt train"):  # one writer per run
        done = artifact_step(spec.ckpt) if resume else None
        if done is not None and done > spec.steps:
            raise UserError(
                f"run {run.name} is at step {done} already; --train-steps {spec.steps} would label its "
                f"step-{done} weights as step {spec.steps} (give --train-steps {done} or more)"
            )
        click.echo(
            f"run {run.name}: training base on {data.name} ({len(data)} images) for {spec.steps} steps on {dev}",
            err=True,
        )
        model = build_unet(model_arch(cfg), seed=cfg["seed"])
        with tracked_stage(run, "base", dev, _say) as ctx:  # a job in runs/show/TUI, with its progress and status
            record_base(run, finished=False)  # a record of an earlier stage 1 no longer holds while it trains
            last = run_train(
                spec, model, create_diffusion(cfg), data, resume=resume, device=dev, **ctx.train_hooks("base", None)
            )
            record_if_finished(run)  # sha256 and size in meta.json: what fork and show check the file against
    click.echo(f"run folder   {run.path}")
    click.echo(
        f"base model   {spec.model_out}  (EMA, step {spec.steps}, last loss {last.get('loss', float('nan')):.4f})"
    )


@click.command(short_help="SNR schedule: MACs budget per timestep and the groups.")
@click.argument("target", metavar="[RUN|CONFIG]", required=False)
@click.option("--preset", default=None, help="Preset (default tiny, or the run's).")
@click.option("--k", "k", type=float, default=None, help="Smallest budget as a fraction of F (paper: 0.5).")
@click.option("--n-groups", "n_groups", type=int, default=None, help="Number of groups N (paper: 10).")
@click.option(
    "--kind",
    type=click.Choice(SCHEDULE_KINDS),
    default=None,
    help="snr (Eq. 8), the Table 3 comparisons, or equal-size groups.",
)
@json_option
@click.option("--timesteps", "with_ts", is_flag=True, help="With --json: list every group's timesteps.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG: SNR, budget, groups.")
@runs_dir_option
@overrides_option
def schedule(target, preset, k, n_groups, kind, as_json, with_ts, plot, runs_dir, overrides):
    """SNR -> MACs budget per timestep (Eq. 7/8) and the timestep groups (Eq. 9/10), of a run (its saved
    schedule, read as it is unless a setting changes), a config file, or a preset."""
    import os

    from core import config as C
    from core.runs import open_run, read_json

    config_file = target if target and os.path.isfile(target) else None
    run_name = target if target and not config_file else None
    extra = list(overrides)
    for key, val in (("k", k), ("groups", n_groups), ("kind", kind)):
        if val is not None:
            extra.append(f"schedule.{key}={val}")
    run = open_run(run_name, runs_dir) if run_name else None
    saved = read_json(run.schedule_file()) if run and not extra and not plot else None
    if saved:  # the run's own schedule, as its stages use it
        data = (
            saved
            if with_ts
            else {**saved, "groups": [{k: v for k, v in g.items() if k != "timesteps"} for g in saved["groups"]]}
        )
    else:
        data = _computed_schedule(
            C.apply_overrides(run.config, extra) if run else C.resolve(preset, config_file, extra), with_ts, plot
        )
    if as_json:
        emit_json(data)
        return
    render.print_schedule(data)
    if plot:
        click.echo(f"plot written to {plot}")


def _computed_schedule(cfg: dict, with_ts: bool, plot) -> dict:
    from core.config import model_arch
    from core.method.schedule import plot_schedule, schedule_from_config
    from core.model.macs import count
    from core.model.unet import build_unet

    m = cfg["model"]
    full = count(build_unet(model_arch(cfg)), m["image_size"], m["in_channels"])["macs"]
    sched = schedule_from_config(cfg, full)
    if plot:
        plot_schedule(sched, plot)
    return sched.to_json(with_timesteps=with_ts)


def _say(line: str) -> None:
    click.echo(line, err=True)


PROXY_FLAGS = (
    "llm",
    "api_base",
    "rounds",
    "proposals",
    "retries",
    "temperature",
    "timeout",
    "replay_run",
    "prompts_dir",
)


def _proxy_settings(run, seed, flags: dict):
    """The proxy as the flags say, on top of the run's config (prune.llm, prune.api_base, prune.rounds); a replay
    asks what the recording asked."""
    from pathlib import Path

    from core.manager.stages.prune import proxy_settings

    ps = proxy_settings(run.config)
    if seed is not None:
        ps.seed = seed
    for key, flag in (
        ("model", "llm"),
        ("api_base", "api_base"),
        ("rounds", "rounds"),
        ("proposals", "proposals"),
        ("retries", "retries"),
        ("temperature", "temperature"),
        ("timeout", "timeout"),
    ):
        if flags[flag] is not None:
            setattr(ps, key, flags[flag])
    if flags["prompts_dir"]:
        ps.prompts_dir = Path(flags["prompts_dir"])
    if flags["replay_run"]:
        _adopt_recorded(run, ps, flags, seed)
    if ps.rounds < 1 or ps.retries < 0 or not 1 <= ps.proposals <= 16:
        raise UserError("--rounds must be >= 1, --proposals in [1, 16] and --retries >= 0")
    return ps


def _adopt_recorded(run, ps, flags: dict, seed) -> None:
    """A replay asks what the recording asked: the recorded model, rounds, retries, temperature and seed,
    except those the user gives; says which it adopted, and when the prompt templates differ."""
    from core.manager.stages.prune import recorded_proxy_settings
    from core.method.proxy import prompts_hash
    from core.store import open_store

    rec = recorded_proxy_settings(run.path.parent, open_store(run.path.parent), flags["replay_run"])
    given = {
        "model": flags["llm"],
        "rounds": flags["rounds"],
        "retries": flags["retries"],
        "temperature": flags["temperature"],
        "seed": seed,
        "proposals": flags.get("proposals"),
    }
    adopted = []
    for key, user in given.items():
        if user is None and rec.get(key) is not None and getattr(ps, key) != rec[key]:
            setattr(ps, key, rec[key])
            adopted.append(f"{key} {rec[key]}")
    src = flags["replay_run"]
    if adopted:
        click.echo(f"replay of {src}: adopted its recorded {', '.join(adopted)} (a flag overrides)", err=True)
    if rec.get("prompts") and rec["prompts"] != prompts_hash(ps.prompts_dir):
        click.echo(
            f"replay of {src}: its prompt templates ({rec['prompts']}) differ from {ps.prompts_dir} "
            f"({prompts_hash(ps.prompts_dir)}); the replay stops where a request differs",
            err=True,
        )


@click.command(short_help="Stage 2a: prune each group's copy to its MACs budget.")
@click.argument("run_name", metavar="RUN")
@click.option(
    "--method",
    type=click.Choice([m for m in PRUNE_METHODS if m != "none"]),
    default=None,
    help="proxy (LLM or offline search) or an importance criterion (default: prune.method).",
)
@click.option("--groups", "groups", default="all", show_default=True, help="all, or group indices like 0,3,9.")
@click.option("--seed", type=int, default=None, help="Seed for random scores and data batches (default: run seed).")
@click.option(
    "--allocation",
    type=click.Choice(ALLOCATIONS),
    default=None,
    help="uniform: one ratio for every unit; global: one threshold on unit-normalised scores.",
)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the per-group reports as JSON.")
@click.option("--llm", default=None, help="Proxy: litellm model string (default stepadapt/local-search, offline).")
@click.option(
    "--api-base", default=None, help="Proxy: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"
)
@click.option("--rounds", type=int, default=None, help="Proxy: rounds per group (default 5).")
@click.option("--proposals", type=int, default=None, help="Proxy: candidates per round, each measured (default 1).")
@click.option("--retries", type=int, default=None, help="Proxy: re-asks after a rejected answer (default 2).")
@click.option("--temperature", type=float, default=None, help="Proxy: sampling temperature (default 0).")
@click.option("--timeout", type=float, default=None, help="Proxy: seconds per LLM call (default 120).")
@click.option(
    "--replay",
    "replay_run",
    default=None,
    metavar="RUN",
    help="Proxy: replay RUN's recorded answers in order (with another --llm: ask it the same and compare).",
)
@click.option(
    "--on-miss",
    type=click.Choice(["fail", "live"]),
    default="fail",
    show_default=True,
    help="Proxy replay: stop at the first diverging request (exit 3) or ask the LLM from there.",
)
@click.option("--cache", "use_cache", is_flag=True, help="Proxy: reuse a recorded answer to an identical request.")
@click.option(
    "--prompts",
    "prompts_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Proxy: folder of prompt templates (default: the project's prompts/).",
)
@runs_dir_option
def prune(
    run_name,
    method,
    groups,
    seed,
    allocation,
    device,
    as_json,
    llm,
    api_base,
    rounds,
    proposals,
    retries,
    temperature,
    timeout,
    replay_run,
    on_miss,
    use_cache,
    prompts_dir,
    runs_dir,
):
    """Stage 2a: prune a copy of the base for every group to its MACs budget (Eq. 14/15).

    Writes RUN/prune/groupNN.json (plan and report); `stepadapt finetune RUN` then fine-tunes the pruned
    copies. A pruned model is rebuilt from the base and its plan."""
    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    set_threads(run.config)
    flags = dict(
        llm=llm,
        api_base=api_base,
        rounds=rounds,
        proposals=proposals,
        retries=retries,
        temperature=temperature,
        timeout=timeout,
        replay_run=replay_run,
        prompts_dir=prompts_dir,
    )
    proxy = None
    if (method or run.config["prune"]["method"]) == "proxy":
        proxy = _proxy_settings(run, seed, flags)
        seed = proxy.seed  # the data batches follow the proxy's seed (a replay's, when adopted)
    elif any(v is not None for v in flags.values()) or use_cache:
        raise UserError(
            "--llm, --api-base, --rounds, --retries, --temperature, --timeout, --replay, --cache "
            "and --prompts are for --method proxy"
        )
    from core.manager.stages.prune import prune_groups
    from core.training.devices import pick_device

    recs = prune_groups(
        run,
        method,
        groups,
        seed,
        allocation,
        pick_device(device),
        log=lambda m: click.echo(m, err=True),
        proxy=proxy,
        replay=replay_run,
        on_miss=on_miss,
        use_cache=use_cache,
    )
    if as_json:
        emit_json([{k: v for k, v in r.items() if k != "plan"} for r in recs])
        return
    render.print_prune_records(run.name, recs)
    click.echo(f"plans in {run.path / 'prune'}; next: stepadapt finetune {shlex.quote(run.name)}")


@click.command(short_help="Stage 2b: fine-tune each group's model on its timesteps.")
@click.argument("run_name", metavar="RUN")
@steps_option("finetune", "Fine-tuning steps per group (default: finetune.steps).")
@click.option("--groups", "groups", default="all", show_default=True, help="all, or group indices like 0,3,9.")
@device_option
@runs_dir_option
def finetune(run_name, steps, groups, device, runs_dir):
    """Stage 2b: fine-tune each group's copy of the base (pruned if `stepadapt prune` ran) on its timesteps only.

    Resumable: finished groups are skipped, interrupted ones continue from their checkpoint. When every
    non-empty group has a model, they are assembled into RUN/models/progressive.pt."""
    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    set_threads(run.config)
    if steps is not None and steps < 1:
        raise UserError("--finetune-steps must be >= 1")
    from core.manager.stages.finetune import finetune_groups
    from core.training.devices import pick_device

    trained = finetune_groups(run, groups, steps, pick_device(device), log=lambda s: click.echo(s, err=True))
    prog = run.model("progressive")
    click.echo(f"fine-tuned groups: {', '.join(map(str, trained)) or 'none (all done)'}")
    if prog.exists():
        click.echo(f"progressive model  {prog}")


@click.command(short_help="The equal-compute control: stage 1 trained on for the fine-tunes' steps.")
@click.argument("run_name", metavar="RUN")
@device_option
@runs_dir_option
def control(run_name, device, runs_dir):
    """Train the equal-compute control: the base model continued from its final checkpoint (weights, EMA,
    optimiser state) on all timesteps for as many steps and images as every group's fine-tune used together
    (RUN/models/control.pt). Resumable; run it after `stepadapt finetune`."""
    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    set_threads(run.config)
    if not run.config["control"]["enabled"]:
        raise UserError(f"run {run.name} has control.enabled = false (set at creation with -S control.enabled=true)")
    from core.manager.stages import control as stage
    from core.training.devices import pick_device

    if not stage.pending(run):
        click.echo(f"control model  {run.model('control')} (done already)")
        return
    with tracked_stage(run, "control", pick_device(device), _say) as ctx:
        stage.work(ctx)
    click.echo(f"control model  {run.model('control')}")


@click.command(short_help="Sample a PNG grid from a run's model.")
@click.argument("run_name", metavar="RUN")
@click.option("--samples", "n", type=int, default=None, help="Number of images (default: the config's sample.n).")
@steps_option("sample", "Sampling steps, respaced (default: the config's sample.steps).")
@click.option(
    "--model",
    "which",
    type=click.Choice(SAMPLE_MODELS),
    default="base",
    show_default=True,
    help="The stage-1 model, or the group models routed by timestep.",
)
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="Sampler (default: sample.method).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default: RUN/samples).")
@device_option
@runs_dir_option
def sample(run_name, n, steps, which, sampler, seed, out, device, runs_dir):
    """Sample images from a run's model and save them as a PNG grid (and a .pt tensor)."""
    from pathlib import Path

    from rich.progress import Progress

    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    cfg = run.config
    set_threads(cfg)
    s, m = cfg["sample"], cfg["model"]
    n = n if n is not None else s["n"]
    steps = steps if steps is not None else s["steps"]
    if n < 1:
        raise UserError("--samples must be >= 1")
    if not 1 <= steps <= cfg["diffusion"]["steps"]:
        raise UserError(f"--sample-steps must be in [1, {cfg['diffusion']['steps']}]")
    path = run.model(which)
    if not path.exists():
        hint = "stepadapt train" if which == "base" else f"stepadapt finetune {run.name}"
        raise UserError(f"run {run.name} has no {which} model yet ({path}); run {hint} first")
    import torch

    from core.method.artifacts import load_progressive, load_unet
    from core.model.diffusion import create_diffusion
    from core.model.sampling import sample_images, save_grid
    from core.training.devices import pick_device

    dev = pick_device(device)
    model = load_progressive(path, dev) if which == "progressive" else load_unet(path, dev)
    total = -(-n // s["batch_size"]) * steps
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"sampling {n} images, {steps} steps", total=total)
        imgs = sample_images(
            model,
            create_diffusion(cfg),
            n,
            image_size=m["image_size"],
            channels=m["in_channels"],
            steps=steps,
            batch_size=s["batch_size"],
            seed=seed,
            method=sampler or s["method"],
            device=dev,
            progress=lambda k: bar.advance(task, k),
            channels_last=s["channels_last"],
        )
    grid_path = run.sample_grid(which, steps, seed)
    if out:
        grid_path = Path(out) / grid_path.name
    grid = save_grid(imgs, grid_path)
    torch.save(imgs, grid_path.with_suffix(".pt"))
    click.echo(f"sample grid  {grid}")


COMMANDS = [train, schedule, prune, finetune, control, sample]
