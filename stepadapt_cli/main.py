"""The ``stepadapt`` command line."""
from __future__ import annotations

import sys

import click

from core import __version__
from core.errors import UserError

from .common import CONTEXT, Cli, _emit_json, _overrides_option, _runs_dir_option, _threads, console

@click.group(cls=Cli, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="stepadapt")
def cli():
    """Step-Adaptive training of diffusion models (arXiv 2312.13307): train a base IDDPM denoiser,
    split timesteps into SNR groups, prune and fine-tune one model per group, sample progressively."""


@cli.command()
@click.option("--preset", default="tiny", show_default=True, help="Model preset: tiny, cifar10, imagenet64.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML config file.")
@_overrides_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(preset, config_file, overrides, as_json):
    """Parameters and MACs of a preset's UNet (MACs = the paper's FLOPs)."""
    from core import config as C
    from core.macs import count
    from core.unet import build_unet

    cfg = C.resolve(preset, config_file, overrides)
    m = cfg["model"]
    res = count(build_unet(m), m["image_size"], m["in_channels"])
    res.update({"preset": cfg["preset"], "image_size": m["image_size"], "timesteps": cfg["diffusion"]["steps"]})
    if as_json:
        _emit_json(res)
        return
    click.echo(f"preset      {res['preset']} ({m['image_size']}x{m['image_size']}x{m['in_channels']}, "
               f"T={res['timesteps']} {cfg['diffusion']['noise_schedule']})")
    click.echo(f"params      {res['params'] / 1e6:.2f} M")
    click.echo(f"MACs        {res['macs'] / 1e9:.3f} G  (convs and linears: the paper's FLOPs)")
    click.echo(f"attention   {res['attn_macs'] / 1e9:.3f} G  (q k^T and w v matmuls, not in the figure above)")


@cli.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", default=None, help="Model preset (default: the config file's, else tiny).")
@click.option("--data", "data_spec", default=None, help="digits | cifar10[:ROOT] | folder:PATH | PATH.")
@click.option("--download", is_flag=True, help="Allow downloading CIFAR-10 if it is missing.")
@click.option("--steps", type=int, default=None, help="Training steps (total, also when resuming).")
@click.option("--run", "run_name", default=None, help="Run name (default: PRESET-DATE-TIME).")
@_runs_dir_option
@click.option("--resume", is_flag=True, help="Continue the run named by --run from its checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--seed", type=int, default=None, help="Seed (default: the config's).")
@_overrides_option
def train(config_file, preset, data_spec, download, steps, run_name, runs_dir, resume, device, seed, overrides):
    """Stage 1: train the base denoiser on all timesteps."""
    from core import config as C
    from core.data import load_dataset
    from core.diffusion import create_diffusion
    from core.runs import create_run, open_run
    from core.train import base_spec, pick_device, train as run_train
    from core.unet import build_unet

    if resume:
        if not run_name:
            raise UserError("--resume needs --run NAME")
        if config_file or preset or overrides or data_spec or seed is not None:
            raise UserError("--resume continues a run with its saved config; only --steps and --device may change")
        run = open_run(run_name, runs_dir)
        cfg = run.config
        if steps is not None:
            cfg["train"]["steps"] = steps
    else:
        extra = list(overrides)
        if data_spec:
            extra.append(f"data.spec={data_spec}")
        if download:
            extra.append("data.download=true")
        if steps is not None:
            extra.append(f"train.steps={steps}")
        if seed is not None:
            extra.append(f"seed={seed}")
        cfg = C.resolve(preset, config_file, extra)
    dev = pick_device(device)
    _threads(cfg)
    data = load_dataset(cfg)  # before creating the run: a missing dataset leaves nothing behind
    if not resume:
        run = create_run(cfg, run_name, runs_dir)
    spec = base_spec(run, cfg)
    click.echo(f"run {run.name}: training base on {data.name} ({len(data)} images) for {spec.steps} steps on {dev}",
               err=True)
    model = build_unet(cfg["model"], seed=cfg["seed"])
    last = run_train(spec, model, create_diffusion(cfg), data, resume=resume, device=dev)
    click.echo(f"run folder   {run.path}")
    click.echo(f"base model   {spec.model_out}  (EMA, step {spec.steps}, last loss {last.get('loss', float('nan')):.4f})")


@cli.command()
@click.argument("run_name", metavar="RUN")
@click.option("--n", "n", type=int, default=None, help="Number of images (default: the config's sample.n).")
@click.option("--steps", type=int, default=None, help="Sampling steps, respaced (default: the config's).")
@click.option("--model", "which", type=click.Choice(["base", "progressive"]), default="base", show_default=True,
              help="The stage-1 model, or the group models routed by timestep.")
@click.option("--method", type=click.Choice(["ancestral", "ddim"]), default=None, help="Sampler.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default: RUN/samples).")
@click.option("--device", default="auto", show_default=True)
@_runs_dir_option
def sample(run_name, n, steps, which, method, seed, out, device, runs_dir):
    """Sample images from a run's model and save them as a PNG grid (and a .pt tensor)."""
    from pathlib import Path

    import torch

    from core.diffusion import create_diffusion
    from core.runs import open_run
    from core.sampling import sample_images, save_grid
    from core.train import pick_device
    from core.unet import load_unet

    run = open_run(run_name, runs_dir)
    cfg = run.config
    _threads(cfg)
    s = cfg["sample"]
    n = n if n is not None else s["n"]
    steps = steps if steps is not None else s["steps"]
    if n < 1:
        raise UserError("--n must be >= 1")
    if not 1 <= steps <= cfg["diffusion"]["steps"]:
        raise UserError(f"--steps must be in [1, {cfg['diffusion']['steps']}]")
    path = run.model(which)
    if not path.exists():
        hint = "stepadapt train" if which == "base" else f"stepadapt finetune {run.name}"
        raise UserError(f"run {run.name} has no {which} model yet ({path}); run {hint} first")
    dev = pick_device(device)
    if which == "progressive":
        from core.progressive import load_progressive

        model = load_progressive(path, dev)
    else:
        model = load_unet(path, dev)
    m = cfg["model"]
    from rich.progress import Progress

    total = -(-n // s["batch_size"]) * steps
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"sampling {n} images, {steps} steps", total=total)
        imgs = sample_images(model, create_diffusion(cfg), n, image_size=m["image_size"], channels=m["in_channels"],
                             steps=steps, batch_size=s["batch_size"], seed=seed, method=method or s["method"],
                             device=dev, progress=lambda k: bar.advance(task, k),
                             channels_last=s["channels_last"])
    out_dir = Path(out) if out else run.samples()
    grid = save_grid(imgs, out_dir / f"{which}_s{steps}_seed{seed}.png")
    torch.save(imgs, out_dir / f"{which}_s{steps}_seed{seed}.pt")
    click.echo(f"sample grid  {grid}")


def _schedule_table(data: dict) -> None:
    from rich.table import Table

    full = data["full_macs"]
    tab = Table(title=f"{data['kind']} schedule: k={data['k']}, N={data['n_groups']}, T={data['num_timesteps']}, "
                      f"F={full / 1e9:.3f} GMACs")
    for col in ("group", "t_start", "t_end", "size", "budget", "budget GMACs", "SNR dB (min..max)"):
        tab.add_column(col, justify="right")
    for g in data["groups"]:
        if g["size"] == 0:
            tab.add_row(str(g["index"]), "-", "-", "0", f"{g['budget_ratio']:.3f}", "-", "empty: skipped")
            continue
        tab.add_row(str(g["index"]), str(g["t_start"]), str(g["t_end"]), str(g["size"]), f"{g['budget_ratio']:.3f}",
                    f"{g['budget_macs'] / 1e9:.3f}", f"{g['snr_min']:.1f} .. {g['snr_max']:.1f}")
    con = console()
    con.print(tab)
    con.print(f"average budget over all T: {data['avg_budget_ratio']:.4f} F = {data['avg_budget_macs'] / 1e9:.3f} GMACs")


@cli.command()
@click.option("--preset", default=None, help="Preset (default tiny, or the run's with --run).")
@click.option("--run", "run_name", default=None, help="Use a run's config.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML config file.")
@click.option("--k", "k", type=float, default=None, help="Smallest budget as a fraction of F (paper: 0.5).")
@click.option("--groups", "n_groups", type=int, default=None, help="Number of groups N (paper: 10).")
@click.option("--kind", type=click.Choice(["snr", "constant", "increasing", "decreasing", "equal"]), default=None,
              help="snr (Eq. 8), the Table 3 comparisons, or equal-size groups.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--timesteps", "with_ts", is_flag=True, help="With --json: list every group's timesteps.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG: SNR, budget, groups.")
@_runs_dir_option
@_overrides_option
def schedule(preset, run_name, config_file, k, n_groups, kind, as_json, with_ts, plot, runs_dir, overrides):
    """SNR -> MACs budget per timestep (Eq. 7/8) and the timestep groups (Eq. 9/10)."""
    from core import config as C
    from core.macs import count
    from core.runs import open_run
    from core.schedule import plot_schedule, schedule_from_config
    from core.unet import build_unet

    extra = list(overrides)
    for key, val in (("k", k), ("groups", n_groups), ("kind", kind)):
        if val is not None:
            extra.append(f"schedule.{key}={val}")
    if run_name:
        cfg = C.apply_overrides(open_run(run_name, runs_dir).config, extra)
    else:
        cfg = C.resolve(preset, config_file, extra)
    m = cfg["model"]
    full = count(build_unet(m), m["image_size"], m["in_channels"])["macs"]
    sched = schedule_from_config(cfg, full)
    data = sched.to_json(with_timesteps=with_ts)
    if plot:
        plot_schedule(sched, plot)
    if as_json:
        _emit_json(data)
    else:
        _schedule_table(data)
        if plot:
            click.echo(f"plot written to {plot}")


@cli.command()
@click.argument("run_name", metavar="RUN")
@click.option("--steps", type=int, default=None, help="Fine-tuning steps per group (default: finetune.steps).")
@click.option("--groups", "groups", default="all", show_default=True, help="all, or group indices like 0,3,9.")
@click.option("--device", default="auto", show_default=True)
@_runs_dir_option
def finetune(run_name, steps, groups, device, runs_dir):
    """Stage 2b: fine-tune each group's copy of the base (pruned if `stepadapt prune` ran) on its timesteps only.

    Resumable: finished groups are skipped, interrupted ones continue from their checkpoint. When every
    non-empty group has a model, they are assembled into RUN/models/progressive.pt."""
    from core.finetune import finetune_groups
    from core.runs import open_run
    from core.train import pick_device

    run = open_run(run_name, runs_dir)
    _threads(run.config)
    if steps is not None and steps < 1:
        raise UserError("--steps must be >= 1")
    dev = pick_device(device)
    trained = finetune_groups(run, groups, steps, dev, log=lambda s: click.echo(s, err=True))
    prog = run.model("progressive")
    click.echo(f"fine-tuned groups: {', '.join(map(str, trained)) or 'none (all done)'}")
    if prog.exists():
        click.echo(f"progressive model  {prog}")


@cli.command()
@click.argument("run_name", metavar="RUN")
@click.option("--method", type=click.Choice(["proxy", "random", "magnitude", "lamp", "taylor", "diff"]), default=None,
              help="proxy (LLM or offline search) or an importance criterion (default: prune.method).")
@click.option("--groups", "groups", default="all", show_default=True, help="all, or group indices like 0,3,9.")
@click.option("--seed", type=int, default=None, help="Seed for random scores and data batches (default: run seed).")
@click.option("--allocation", type=click.Choice(["uniform", "global"]), default=None,
              help="uniform: one ratio for every unit; global: one threshold on unit-normalised scores.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the per-group reports as JSON.")
@click.option("--llm", default=None, help="Proxy: litellm model string (default stepadapt/local-search, offline).")
@click.option("--api-base", default=None, help="Proxy: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
@click.option("--rounds", type=int, default=None, help="Proxy: rounds per group (default 5).")
@click.option("--retries", type=int, default=None, help="Proxy: re-asks after a rejected answer (default 2).")
@click.option("--temperature", type=float, default=None, help="Proxy: sampling temperature (default 0).")
@click.option("--timeout", type=float, default=None, help="Proxy: seconds per LLM call (default 120).")
@click.option("--replay", "replay_run", default=None, metavar="RUN",
              help="Proxy: replay RUN's recorded answers in order (with another --llm: ask it the same and compare).")
@click.option("--on-miss", type=click.Choice(["fail", "live"]), default="fail", show_default=True,
              help="Proxy replay: stop at the first diverging request (exit 3) or ask the LLM from there.")
@click.option("--cache", "use_cache", is_flag=True, help="Proxy: reuse a recorded answer to an identical request.")
@click.option("--prompts", "prompts_dir", type=click.Path(file_okay=False), default=None,
              help="Proxy: folder of prompt templates (default: the project's prompts/).")
@_runs_dir_option
def prune(run_name, method, groups, seed, allocation, device, as_json, llm, api_base, rounds, retries, temperature,
          timeout, replay_run, on_miss, use_cache, prompts_dir, runs_dir):
    """Stage 2a: prune a copy of the base for every group to its MACs budget (Eq. 14/15).

    Writes RUN/prune/groupNN.json (plan and report); `stepadapt finetune RUN` then fine-tunes the pruned
    copies. A pruned model is rebuilt from the base and its plan."""
    from core.prune_stage import prune_groups
    from core.runs import open_run
    from core.train import pick_device

    run = open_run(run_name, runs_dir)
    _threads(run.config)
    proxy = None
    proxy_flags = (llm, api_base, rounds, retries, temperature, timeout, replay_run, prompts_dir)
    if (method or run.config["prune"]["method"]) == "proxy":
        from pathlib import Path

        from core.proxy import ProxySettings

        ps = ProxySettings(seed=run.config["seed"] if seed is None else seed)
        for key, val in (("model", llm), ("api_base", api_base), ("rounds", rounds), ("retries", retries),
                         ("temperature", temperature), ("timeout", timeout)):
            if val is not None:
                setattr(ps, key, val)
        if prompts_dir:
            ps.prompts_dir = Path(prompts_dir)
        if ps.rounds < 1 or ps.retries < 0:
            raise UserError("--rounds must be >= 1 and --retries >= 0")
        if replay_run and llm is None:
            from core.store import open_store

            calls = open_store(run.path.parent).calls(replay_run)
            if calls:
                ps.model = calls[0]["model_asked"]  # replay asks what the recording asked
        proxy = ps
    elif any(v is not None for v in proxy_flags) or use_cache:
        raise UserError("--llm, --api-base, --rounds, --retries, --temperature, --timeout, --replay, --cache "
                        "and --prompts are for --method proxy")
    recs = prune_groups(run, method, groups, seed, allocation, pick_device(device),
                        log=lambda m: click.echo(m, err=True), proxy=proxy, replay=replay_run, on_miss=on_miss,
                        use_cache=use_cache)
    if as_json:
        _emit_json([{k: v for k, v in r.items() if k != "plan"} for r in recs])
        return
    from rich.table import Table

    tab = Table(title=f"{run.name}: pruned group models")
    for col in ("group", "t", "budget G", "MACs G", "MACs/F", "gap", "params M", "loss before", "loss after"):
        tab.add_column(col, justify="right")
    for r in recs:
        rep = r["report"]
        tab.add_row(str(r["group"]), f"{r['t_start']}-{r['t_end']}", f"{r['budget_macs'] / 1e9:.4f}",
                    f"{rep['macs'] / 1e9:.4f}", f"{rep['macs_ratio']:.3f}", f"{100 * rep['budget_gap']:.2f}%",
                    f"{rep['params'] / 1e6:.3f}", f"{rep.get('loss_before', float('nan')):.4f}",
                    f"{rep.get('loss_after', float('nan')):.4f}")
    console().print(tab)
    click.echo(f"plans in {run.path / 'prune'}; next: stepadapt finetune {run.name}")


@cli.command()
@click.argument("run_name", metavar="RUN")
@click.option("--steps", type=int, default=None, help="Sampling steps to average over (default: sample.steps).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_runs_dir_option
def macs(run_name, steps, as_json, runs_dir):
    """MACs and params of a run's base and progressive models, averaged over timesteps (paper Table 1)."""
    from core.macs import count, progressive_cost
    from core.runs import open_run
    from core.unet import load_unet

    run = open_run(run_name, runs_dir)
    cfg = run.config
    m = cfg["model"]
    steps = steps or cfg["sample"]["steps"]
    if not 1 <= steps <= cfg["diffusion"]["steps"]:
        raise UserError(f"--steps must be in [1, {cfg['diffusion']['steps']}]")
    if not run.model("base").exists():
        raise UserError(f"run {run.name} has no base model yet")
    out = {"run": run.name, "sample_steps": steps,
           "base": count(load_unet(run.model("base")), m["image_size"], m["in_channels"])}
    if run.model("progressive").exists():
        from core.progressive import load_progressive

        prog = load_progressive(run.model("progressive"))
        cost = progressive_cost(prog, m["image_size"], m["in_channels"], steps)
        cost["params_total"] = sum(p.numel() for p in prog.parameters())
        cost["groups"] = {str(g): v for g, v in cost["groups"].items()}
        out["progressive"] = cost
    if as_json:
        _emit_json(out)
        return
    from rich.table import Table

    tab = Table(title=f"{run.name}: per-sample cost, averaged over timesteps")
    for col in ("model", "params (avg, M)", "MACs avg over T (G)", f"MACs avg over {steps} steps (G)",
                "+ attention (G)"):
        tab.add_column(col, justify="right")
    b = out["base"]
    tab.add_row("base", f"{b['params'] / 1e6:.2f}", f"{b['macs'] / 1e9:.3f}", f"{b['macs'] / 1e9:.3f}",
                f"{b['attn_macs'] / 1e9:.3f}")
    if "progressive" in out:
        p = out["progressive"]
        tab.add_row("progressive", f"{p['avg_all']['params'] / 1e6:.2f}", f"{p['avg_all']['macs'] / 1e9:.3f}",
                    f"{p['avg_sampled']['macs'] / 1e9:.3f}", f"{p['avg_all']['attn_macs'] / 1e9:.3f}")
    console().print(tab)


@cli.command("llm-log")
@click.argument("run_name", metavar="RUN")
@click.option("--group", type=int, default=None, help="Only this group's calls.")
@click.option("--call", "call_id", type=int, default=None, help="Show one call whole (messages and answer).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_runs_dir_option
def llm_log(run_name, group, call_id, as_json, runs_dir):
    """List the proxy's LLM calls of a run (round, model, tokens, latency, verdict), or show one whole."""
    from core.runs import runs_root
    from core.store import open_store

    store = open_store(runs_root(runs_dir))
    if call_id is not None:
        c = store.call(call_id)
        if c is None or c["run"] != run_name:
            raise UserError(f"no call {call_id} in run {run_name!r}")
        if as_json:
            _emit_json(c)
            return
        click.echo(f"call {c['id']}  run {c['run']}  group {c['group_index']}  round {c['round'] + 1}  "
                   f"attempt {c['attempt']}  source {c['source']}  model {c['model_asked']} -> {c['model_resolved']}")
        click.echo(f"request key {c['request_key']}  latency {c['latency_s'] or 0:.2f}s  tokens "
                   f"{c['prompt_tokens']}/{c['completion_tokens']}  cost {c['cost']}")
        for m in c["messages"]:
            click.echo(f"\n--- {m['role']} ---\n{m['content']}")
        click.echo(f"\n--- answer ---\n{c['response_text']}")
        verdict = c["error"] or c["validation_error"] or "accepted"
        click.echo(f"\n--- verdict ---\n{verdict}")
        return
    calls = store.calls(run_name, group)
    if not calls:
        raise UserError(f"no recorded LLM calls for run {run_name!r} in {store.path}")
    rows = [{"id": c["id"], "group": c["group_index"], "round": c["round"] + 1, "attempt": c["attempt"],
             "source": c["source"], "model": c["model_asked"], "prompt_tokens": c["prompt_tokens"],
             "completion_tokens": c["completion_tokens"], "latency_s": c["latency_s"], "cost": c["cost"],
             "verdict": "error" if c["error"] else ("rejected" if c["validation_error"] else "accepted"),
             "reason": c["error"] or c["validation_error"], "request_key": c["request_key"],
             "linked_call": c["linked_call"]} for c in calls]
    if as_json:
        _emit_json(rows)
        return
    from rich.table import Table

    tab = Table(title=f"{run_name}: LLM calls")
    for col in ("id", "group", "round", "try", "source", "model", "tokens", "latency", "verdict"):
        tab.add_column(col)
    for r in rows:
        tok = f"{r['prompt_tokens']}/{r['completion_tokens']}" if r["prompt_tokens"] is not None else "-"
        verdict = r["verdict"] + (f": {r['reason'][:40]}" if r["reason"] else "")
        tab.add_row(str(r["id"]), str(r["group"]), str(r["round"]), str(r["attempt"]), r["source"], r["model"], tok,
                    f"{r['latency_s'] or 0:.2f}s", verdict)
    console().print(tab)


from . import evalcmd, manage  # noqa: E402


@cli.command()
@click.argument("run_name", metavar="[RUN]", required=False)
@_runs_dir_option
def tui(run_name, runs_dir):
    """Watch runs live in the terminal: runs, groups training, job logs, proxy rounds (press ? for keys)."""
    from core.runs import runs_root

    from .tui import StepadaptApp

    app = StepadaptApp(runs_root(runs_dir), run_name)
    app.run()
    if app.return_code:  # a crash inside the app must not look like a clean quit
        raise click.exceptions.Exit(app.return_code)


for _cmd in manage.COMMANDS + evalcmd.COMMANDS:
    cli.add_command(_cmd)


def main():
    cli(prog_name="stepadapt")


if __name__ == "__main__":
    main()
