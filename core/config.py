"""Configuration: a preset, optionally a YAML/TOML file, then ``-S key=value`` overrides.

The resolved config is a plain nested dict; its hash (sha256 of canonical JSON) identifies it.
Every key a file or override sets must already exist in the preset, with a value of the same type
(lists element by element), so a typo fails loudly instead of being ignored. Files are bounded: at most
``MAX_FILE_BYTES``, UTF-8, no YAML aliases (an alias bomb expands a few hundred bytes into gigabytes),
nesting at most ``MAX_DEPTH`` deep, lists at most ``MAX_LIST`` long.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Iterable

import yaml

from core.errors import UserError
from core.names import METRICS, NOISE_SCHEDULES, PRUNE_METHODS, SAMPLERS, SCHEDULE_KINDS, TRUNKS

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 8
MAX_LIST = 64


class _ConfigLoader(yaml.SafeLoader):
    """YAML without aliases: ``*name`` is refused where it is met, before anything is expanded."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in config files", mark)
        return super().compose_node(parent, index)


def _yaml(text: str):
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader without aliases)


_BASE: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    "model": {
        "image_size": 32,
        "in_channels": 3,
        "model_channels": 128,
        "num_res_blocks": 3,
        "channel_mult": [1, 2, 2, 2],
        "attention_resolutions": [16, 8],
        "num_heads": 4,
        "dropout": 0.3,
        "learn_sigma": True,
        "scale_shift_norm": True,
        "norm_groups": 32,
        # True for improved-diffusion's models (the network sees t * 1000 / T); off for models trained here
        "rescale_timesteps": False,
        # where the base model's layout comes from: iddpm (improved-diffusion's UNet) or diffusers (a UNet2DModel)
        "family": "iddpm",
        # timestep embedding [cos | sin] (IDDPM) or [sin | cos] (False: DDPM, diffusers' flip_sin_to_cos)
        "time_flip_sin_to_cos": True,
        # timestep embedding frequencies exp(-log(10000) i / (dim/2 - shift)); diffusers' freq_shift
        "time_freq_shift": 0,
        # downsampling conv padding: 1 on every side (IDDPM), 0 = right and bottom only (DDPM/diffusers)
        "downsample_padding": 1,
        # every GroupNorm's epsilon (diffusers' norm_eps; DDPM's models use 1e-6)
        "norm_eps": 1e-5,
        # channels per attention head, diffusers' attention_head_dim (0: model.num_heads heads per block)
        "head_channels": 0,
    },
    "diffusion": {
        "steps": 4000,
        "noise_schedule": "cosine",
        "vlb_weight": 0.001,
        # reverse variance when model.learn_sigma is off: large (sigma^2 = beta_t) or small (the posterior's, DDPM)
        "fixed_variance": "large",
    },
    "data": {"spec": "cifar10", "root": "data", "flip": True, "download": False, "workers": 4, "holdout": 0},
    "train": {
        "steps": 500000,
        "batch_size": 128,
        "lr": 1e-4,
        "weight_decay": 0.0,
        "ema_decay": 0.9999,
        "grad_clip": 1.0,
        "log_every": 100,
        "ckpt_every": 10000,
        "bf16": True,
        "threads": 0,
        "channels_last": True,
        "compile": False,
        "accum": 1,
        "keep": [],
    },
    "schedule": {"kind": "snr", "k": 0.5, "groups": 10},
    "finetune": {
        "steps": 25000,
        "lr": 1e-4,
        "batch_size": 128,
        "ema_decay": 0.9999,
        "distill": 0.0,
        "ema_warmup": True,
        "eval_every": 0,
        "keep": "last",
        "single_stage": False,
        "fid_n": 0,
        "trunk": "separate",
        "trunk_share": 0.5,
    },
    "control": {"enabled": True, "uniform": False, "dense": False},
    "prune": {
        "method": "proxy",
        "allocation": "uniform",
        "tolerance": 0.03,
        "batch_size": 32,
        "batches": 4,
        "images": 256,
        "eval_images": 256,
        "llm": "stepadapt/local-search",
        "api_base": "",
        "rounds": 5,
        "scratch_from": "",
        "proposals": 1,
    },
    "sample": {"steps": 100, "n": 64, "batch_size": 64, "method": "ancestral", "channels_last": True},
    # where the stage jobs run (not part of the config hash: it says where, not what); see manager/slurm.py
    "launcher": {
        "kind": "local",
        "partition": "",
        "gpus_per_job": 0,
        "cpus_per_job": 0,
        "mem": "",
        "time": 0,
        "account": "",
        "qos": "",
        "sbatch": [],
        "requeues": 3,
        "signal_s": 90,
    },
    "eval": {
        "loss_images": 256,
        "loss_draws": 2,
        "fid": True,
        "fid_n": 50000,
        "steps": 100,
        "batch_size": 256,
        "ref_n": 0,
        "inception": "",
        "primary": "fid",
        "bootstrap": 200,
    },
}


# One line per key: what it means. docs/generate.py renders this as docs/config.md with every preset's value,
# and tests/test_docs.py fails when a key of _BASE has no line here.
KEY_DOCS: dict[str, str] = {
    "preset": "the preset the run was resolved from (cifar10, imagenet64, tiny)",
    "seed": "seed of training, pruning and sampling; every random draw of the run derives from it",
    "model.image_size": "image side in pixels",
    "model.in_channels": "image channels (3 RGB, 1 grey)",
    "model.model_channels": "the UNet's base width: channels of the first level",
    "model.num_res_blocks": "residual blocks per level on the way down (one more on the way up)",
    "model.channel_mult": "each level's width as a multiple of model_channels",
    "model.attention_resolutions": "feature-map sides with self-attention after each residual block",
    "model.num_heads": "attention heads per block (when model.head_channels is 0)",
    "model.dropout": "dropout in the residual blocks",
    "model.learn_sigma": "the network also predicts the reverse variance (IDDPM's learned range; L_hybrid)",
    "model.scale_shift_norm": "the timestep embedding scales and shifts the normalised features (else adds)",
    "model.norm_groups": "GroupNorm groups",
    "model.rescale_timesteps": "the network sees t * 1000 / T (improved-diffusion's models); off for ours",
    "model.family": "where the layout comes from: iddpm (improved-diffusion's UNet) or diffusers (a UNet2DModel)",
    "model.time_flip_sin_to_cos": "timestep embedding as [cos | sin] (IDDPM) or [sin | cos] (False: DDPM, diffusers)",
    "model.time_freq_shift": "timestep embedding frequencies exp(-log(10000) i / (dim/2 - shift)) (diffusers)",
    "model.downsample_padding": "downsampling conv padding: 1 on every side (IDDPM), 0 right and bottom only (DDPM)",
    "model.norm_eps": "every GroupNorm's epsilon (DDPM's models use 1e-6)",
    "model.head_channels": "channels per attention head (diffusers' attention_head_dim); 0: model.num_heads heads",
    "diffusion.steps": "T, the number of diffusion timesteps",
    "diffusion.noise_schedule": "beta schedule: cosine (IDDPM) or linear (DDPM)",
    "diffusion.vlb_weight": "weight of L_vlb in L_hybrid = L_simple + w L_vlb (IDDPM: 0.001)",
    "diffusion.fixed_variance": "reverse variance without model.learn_sigma: large (beta_t) or small (the posterior's)",
    "data.spec": "the images: digits (bundled), cifar10[:ROOT], folder:PATH or PATH",
    "data.root": "where downloaded or prepared data sets live",
    "data.flip": "random horizontal flips while training",
    "data.download": "allow downloading the data set (never without it)",
    "data.workers": "data loader processes",
    "data.holdout": "images held out of training for the held-out losses and pruning (0: none)",
    "train.steps": "stage 1 training steps",
    "train.batch_size": "stage 1 batch size (split between DDP ranks)",
    "train.lr": "AdamW learning rate",
    "train.weight_decay": "AdamW weight decay",
    "train.ema_decay": "decay of the EMA weights every saved model is made of",
    "train.grad_clip": "gradient norm clip (0: none)",
    "train.log_every": "steps between logged losses",
    "train.ckpt_every": "steps between resume checkpoints",
    "train.bf16": "bf16 autocast where the device has it natively (CUDA, AMX CPUs)",
    "train.threads": "CPU threads per job (0: as the environment says)",
    "train.channels_last": "channels-last memory layout while training",
    "train.compile": "torch.compile the model",
    "train.accum": "gradient accumulation steps per optimiser step",
    "train.keep": "steps at which stage 1 keeps its EMA model as a milestone (fork RUN@STEP)",
    "schedule.kind": "the budget over timesteps: snr (Eq. 8), the Table 3 comparisons, equal or snr-reversed",
    "schedule.k": "the smallest budget as a fraction of the full model's MACs F (budgets lie in [kF, F])",
    "schedule.groups": "N, the number of timestep groups (one pruned model each)",
    "finetune.steps": "fine-tuning steps per group (the controls train for the groups' total)",
    "finetune.lr": "fine-tuning learning rate",
    "finetune.batch_size": "fine-tuning batch size",
    "finetune.ema_decay": "decay of the fine-tuned models' EMA weights",
    "finetune.distill": "weight of distillation from the base at the group's timesteps (0: none)",
    "finetune.ema_warmup": "the EMA decay ramps up over the first steps (a short fine-tune keeps its training)",
    "finetune.eval_every": "steps between held-out loss measurements of a group model (0: none)",
    "finetune.keep": "which weights a group keeps: last, or best (lowest held-out loss)",
    "finetune.single_stage": "the paper's single-stage variant: every group model from scratch, no stage 1",
    "finetune.fid_n": "samples for FID along fine-tuning (0: none)",
    "finetune.trunk": "separate (a whole model per group) or shared: one encoder for all groups, decoders per group",
    "finetune.trunk_share": "finetune.trunk shared: the part of each group's finetune.steps that trains the trunk",
    "control.enabled": "train the equal-compute control: stage 1 trained on for the fine-tunes' total steps",
    "control.uniform": "also the control at equal inference cost: one copy pruned to the progressive MACs",
    "control.dense": "also a dense narrower UNet of that cost, trained from scratch as long",
    "prune.method": "how group models are pruned: proxy, an importance criterion, scratch or none",
    "prune.allocation": "how a budget is spread over the layers: uniform or global",
    "prune.tolerance": "how far under its budget a pruned model may land, as a fraction",
    "prune.batch_size": "batch size of importance and loss estimates",
    "prune.batches": "batches per importance estimate",
    "prune.images": "images for importance estimates",
    "prune.eval_images": "held-out images for the loss before and after pruning",
    "prune.llm": "the proxy's LLM (a litellm model string; stepadapt/local-search works offline)",
    "prune.api_base": "base URL of an OpenAI-compatible server for the proxy",
    "prune.rounds": "proxy rounds per group (each with the memory bank of the ones before)",
    "prune.scratch_from": "prune.method scratch: the run whose pruned architectures are trained from scratch",
    "prune.proposals": "candidate plans the proxy asks for per round",
    "sample.steps": "respaced sampling steps of `stepadapt sample`",
    "sample.n": "images `stepadapt sample` draws",
    "sample.batch_size": "sampling batch size",
    "sample.method": "the sampler: ancestral or ddim",
    "sample.channels_last": "channels-last layout while sampling",
    "launcher.kind": "where stage jobs run: local processes or slurm",
    "launcher.partition": "Slurm partition",
    "launcher.gpus_per_job": "Slurm: GPUs per job",
    "launcher.cpus_per_job": "Slurm: CPUs per job",
    "launcher.mem": "Slurm: memory per job, e.g. 32G",
    "launcher.time": "Slurm: time limit per job in minutes (0: no --time)",
    "launcher.account": "Slurm account",
    "launcher.qos": "Slurm quality of service",
    "launcher.sbatch": "any other sbatch option, KEY=VALUE",
    "launcher.requeues": "Slurm: how often a job stopped by its time limit is submitted again",
    "launcher.signal_s": "Slurm: seconds before the time limit that the job is told to checkpoint",
    "eval.loss_images": "held-out images for the per-group losses",
    "eval.loss_draws": "noise draws per image and timestep for the per-group losses",
    "eval.fid": "measure FID and KID (else losses and MACs only)",
    "eval.fid_n": "samples per model for FID and KID",
    "eval.steps": "respaced sampling steps of the evaluation's samples",
    "eval.batch_size": "the evaluation's sampling batch size",
    "eval.ref_n": "reference images for FID's statistics (0: the whole set)",
    "eval.inception": "TorchScript Inception weights for standard FID (empty: domain FID)",
    "eval.primary": "the metric verdicts are drawn on: fid or kid",
    "eval.bootstrap": "resamples for the intervals (half-sampling)",
}


def _preset(**sections: dict) -> dict:
    cfg = copy.deepcopy(_BASE)
    for key, val in sections.items():
        if isinstance(val, dict):
            cfg[key].update(val)
        else:
            cfg[key] = val
    return cfg


PRESETS: dict[str, dict] = {
    # IDDPM's CIFAR-10 model (L_hybrid, cosine, T = 4000): 52.5M params, 8.14 GMACs
    "cifar10": _preset(preset="cifar10"),
    # IDDPM's ImageNet-64 model: 121M params, 39.4 GMACs
    "imagenet64": _preset(
        preset="imagenet64",
        model={"image_size": 64, "channel_mult": [1, 2, 3, 4], "dropout": 0.0},
        data={"spec": "folder:data/imagenet64", "flip": True},
        train={"steps": 1500000},
        finetune={"steps": 50000},
    ),
    # a small model for CPUs: trains on the bundled digits in minutes
    "tiny": _preset(
        preset="tiny",
        model={
            "image_size": 32,
            "in_channels": 1,
            "model_channels": 32,
            "num_res_blocks": 1,
            "channel_mult": [1, 2, 2],
            "attention_resolutions": [8],
            "num_heads": 2,
            "dropout": 0.0,
            "norm_groups": 8,
        },
        diffusion={"steps": 1000},
        data={"spec": "digits", "flip": False, "workers": 0},
        train={
            "steps": 1500,
            "batch_size": 32,
            "lr": 2e-4,
            "ema_decay": 0.995,
            "log_every": 50,
            "ckpt_every": 500,
            "threads": 0,
        },
        finetune={"steps": 100, "lr": 1e-4, "batch_size": 32, "ema_decay": 0.99},
        sample={"steps": 50, "n": 64, "batch_size": 64},
        prune={"rounds": 3},
        eval={"fid_n": 1024, "steps": 25},
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


def _merge(cfg: dict, update: dict, where: str, prefix: str = "") -> None:
    for key, val in update.items():
        path = f"{prefix}{key}"
        if key not in cfg:
            close = difflib.get_close_matches(str(key), [str(k) for k in cfg], n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known: {', '.join(map(str, cfg))}"
            raise UserError(f"{where}: unknown config key {path!r}{hint}")
        if isinstance(cfg[key], dict):
            if not isinstance(val, dict):
                raise UserError(f"{where}: {path!r} must be a table of settings, got {val!r}")
            _merge(cfg[key], val, where, path + ".")
        else:
            cfg[key] = _coerce(cfg[key], val, path, where)


def _coerce(default: Any, val: Any, path: str, where: str) -> Any:
    if default is None:  # an optional setting (a path, a URL): text or nothing
        if val is None or isinstance(val, str):
            return val
        raise UserError(f"{where}: {path!r} expects text, got {val!r}")
    if val is None:
        raise UserError(f"{where}: {path!r} needs a value ({type(default).__name__}), got null")
    kind = type(default)
    if kind is bool:
        if isinstance(val, bool):
            return val
        if isinstance(val, str) and val.lower() in ("true", "false", "1", "0", "yes", "no"):
            return val.lower() in ("true", "1", "yes")
    elif kind is int:
        if isinstance(val, int) and not isinstance(val, bool):
            return val
        if isinstance(val, float) and val.is_integer():
            return int(val)
    elif kind is float:
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            return float(val)
    elif kind is list:
        if isinstance(val, int) and not isinstance(val, bool):
            val = [val]
        if isinstance(val, str) and not default:  # -S train.keep=1500,3000: a list of numbers written plainly
            val = [int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in val.split(",") if v.strip()]
        if isinstance(val, (list, tuple)):
            if len(val) > MAX_LIST:
                raise UserError(f"{where}: {path!r} has {len(val)} items; at most {MAX_LIST}")
            if not default:
                return list(val)
            return [_coerce(default[0], v, f"{path}[{i}]", where) for i, v in enumerate(val)]
    elif kind is str:
        if isinstance(val, (str, int, float)) and not isinstance(val, bool):
            return str(val)
    raise UserError(f"{where}: {path!r} expects {kind.__name__}, got {val!r}")


def load_file(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"config file {p} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"config file {p} is not UTF-8 text (byte {e.start})") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else _yaml(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise UserError(f"malformed config file {where}: {e.problem or e.context}") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"malformed config file {p}: {first}") from None
    except RecursionError:
        raise UserError(f"config file {p} is nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"malformed config file {p}: top level must be a mapping of settings")
    _check_depth(data, str(p))
    return data


def _check_depth(value, where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise UserError(f"{where}: settings nested more than {MAX_DEPTH} levels deep")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in children:
        _check_depth(v, where, depth + 1)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"bad -S value {item!r}: expected key=value, e.g. -S train.steps=200")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"bad -S value {item!r}: empty key")
    if len(key.split(".")) > MAX_DEPTH:
        raise UserError(f"bad -S value {item!r}: key nested too deeply")
    try:
        val = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        val = raw
    except RecursionError:
        raise UserError(f"bad -S value {item!r}: nested too deeply") from None
    _check_depth(val, f"bad -S value {item!r}")
    return key.split("."), val


def resolve(preset_name: str | None, file: str | None = None, overrides: Iterable[str] = ()) -> dict:
    """preset <- file <- overrides. A file may name its preset with ``preset: NAME``."""
    file_data = load_file(file) if file else {}
    name = preset_name or file_data.get("preset") or "tiny"
    cfg = preset(name)
    file_data = {k: v for k, v in file_data.items() if k != "preset"}
    _merge(cfg, file_data, f"config file {file}")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` overrides to ``cfg`` in place, then validate it."""
    for item in overrides:
        keys, val = parse_override(item)
        nested: Any = val
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, f"bad -S value {item!r}")
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    m, d, t = cfg["model"], cfg["diffusion"], cfg["train"]
    for key in ("image_size", "model_channels", "num_res_blocks", "num_heads", "norm_groups"):
        if m.get(key) is not None and m[key] < 1:
            raise UserError(f"invalid config: model.{key} must be >= 1")
    if m["image_size"] > 1024 or m["model_channels"] > 4096:
        raise UserError("invalid config: model.image_size at most 1024, model.model_channels at most 4096")
    checks = [
        (
            m["image_size"] >= 8 and m["image_size"] & (m["image_size"] - 1) == 0,
            "model.image_size must be a power of two >= 8",
        ),
        (m["in_channels"] in (1, 3), "model.in_channels must be 1 or 3"),
        (m["model_channels"] > 0 and m["num_res_blocks"] > 0, "model sizes must be positive"),
        (len(m["channel_mult"]) > 0 and all(x > 0 for x in m["channel_mult"]), "model.channel_mult must be positive"),
        (
            m["image_size"] >> (len(m["channel_mult"]) - 1) >= 1,
            "model.channel_mult has more levels than image_size allows",
        ),
        (
            all(m["model_channels"] * x % m["num_heads"] == 0 for x in m["channel_mult"]),
            "channels must divide into model.num_heads",
        ),
        (0 <= m["dropout"] < 1, "model.dropout must be in [0, 1)"),
        (m["family"] in ("iddpm", "diffusers"), "model.family must be iddpm or diffusers"),
        (m["downsample_padding"] in (0, 1), "model.downsample_padding must be 0 or 1"),
        (m["norm_eps"] > 0 and m["time_freq_shift"] >= 0, "model.norm_eps must be > 0, model.time_freq_shift >= 0"),
        (
            m["head_channels"] == 0
            or (
                m["head_channels"] > 0
                and all(m["model_channels"] * x % m["head_channels"] == 0 for x in m["channel_mult"])
            ),
            "model.head_channels must be 0 or divide every level's channels",
        ),
        (d["fixed_variance"] in ("large", "small"), "diffusion.fixed_variance must be large or small"),
        (d["steps"] >= 2, "diffusion.steps must be >= 2"),
        (
            d["noise_schedule"] in NOISE_SCHEDULES,
            f"diffusion.noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}",
        ),
        (t["steps"] >= 0 and t["batch_size"] > 0 and t["lr"] > 0, "train.steps/batch_size/lr must be positive"),
        (0 < t["ema_decay"] < 1, "train.ema_decay must be in (0, 1)"),
        (t["log_every"] > 0 and t["ckpt_every"] > 0, "train.log_every and train.ckpt_every must be positive"),
        (t["accum"] >= 1 and t["batch_size"] % t["accum"] == 0, "train.accum must be >= 1 and divide train.batch_size"),
        (0 < cfg["schedule"]["k"] <= 1, "schedule.k must be in (0, 1]"),
        (cfg["schedule"]["groups"] >= 1, "schedule.groups must be >= 1"),
        (cfg["schedule"]["kind"] in SCHEDULE_KINDS, f"schedule.kind must be one of {', '.join(SCHEDULE_KINDS)}"),
        (cfg["sample"]["method"] in SAMPLERS, f"sample.method must be one of {', '.join(SAMPLERS)}"),
        (cfg["prune"]["method"] in PRUNE_METHODS, f"prune.method must be one of {', '.join(PRUNE_METHODS)}"),
        (cfg["prune"]["rounds"] >= 1, "prune.rounds must be >= 1"),
        (1 <= cfg["prune"]["proposals"] <= 16, "prune.proposals must be in [1, 16]"),
        (
            cfg["prune"]["method"] != "scratch" or cfg["prune"]["scratch_from"],
            "prune.method scratch needs prune.scratch_from: "
            "the run whose pruned architectures are trained from scratch",
        ),
        (cfg["eval"]["fid_n"] >= 2 or not cfg["eval"]["fid"], "eval.fid_n must be >= 2"),
        (1 <= cfg["eval"]["steps"] <= d["steps"], "eval.steps must be in [1, diffusion.steps]"),
        (cfg["eval"]["primary"] in METRICS, f"eval.primary must be one of {', '.join(METRICS)}"),
        (cfg["eval"]["bootstrap"] >= 20, "eval.bootstrap must be >= 20 (resamples for the intervals)"),
        (
            all(
                isinstance(k, int) and not isinstance(k, bool) and 0 < k < cfg["train"]["steps"]
                for k in cfg["train"]["keep"]
            ),
            "train.keep must list steps between 0 and train.steps (milestones: the base's EMA weights kept there)",
        ),
        (cfg["finetune"]["distill"] >= 0, "finetune.distill must be >= 0"),
        (cfg["finetune"]["eval_every"] >= 0, "finetune.eval_every must be >= 0 (0: off)"),
        (cfg["finetune"]["keep"] in ("last", "best"), "finetune.keep must be last or best"),
        (
            not cfg["finetune"]["single_stage"]
            or (cfg["prune"]["method"] == "none" and cfg["finetune"]["distill"] == 0),
            "finetune.single_stage (every group's model from scratch, no stage 1) needs prune.method none and no "
            "finetune.distill",
        ),
        (
            cfg["finetune"]["fid_n"] == 0
            or (cfg["finetune"]["fid_n"] >= 2 and cfg["finetune"]["eval_every"] > 0 and cfg["eval"]["fid"]),
            "finetune.fid_n (FID of the whole model during fine-tuning) needs finetune.eval_every > 0, eval.fid on and "
            "at least 2 samples (0: off)",
        ),
        (
            cfg["finetune"]["keep"] == "last" or cfg["finetune"]["eval_every"] > 0,
            "finetune.keep best needs finetune.eval_every > 0 (what 'best' is measured by)",
        ),
        *trunk_checks(cfg),
        (
            cfg["sample"]["steps"] >= 1 and cfg["sample"]["steps"] <= d["steps"],
            "sample.steps must be in [1, diffusion.steps]",
        ),
        *launcher_checks(cfg["launcher"]),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"invalid config: {msg}")


def trunk_checks(cfg: dict) -> list[tuple[bool, str]]:
    """``finetune.trunk``: a known value; shared, a trunk and decoders that each train at least one step, from the
    base's weights (not the single-stage variant, not ``prune.method scratch``, which start from fresh weights)."""
    f = cfg["finetune"]
    if f["trunk"] != "shared":
        return [(f["trunk"] in TRUNKS, f"finetune.trunk must be one of {', '.join(TRUNKS)}")]
    trunk, decoder = trunk_split(cfg, 1)
    return [
        (0 < f["trunk_share"] < 1, "finetune.trunk_share must be in (0, 1)"),
        (
            trunk >= 1 and decoder >= 1,
            f"finetune.trunk shared gives round({f['trunk_share']:g} x finetune.steps) = {trunk} of each group's "
            f"{f['steps']} steps to the trunk and {decoder} to its decoder; both need at least 1",
        ),
        (
            not f["single_stage"] and cfg["prune"]["method"] != "scratch",
            "finetune.trunk shared fine-tunes the base's encoder once for every group: not with "
            "finetune.single_stage or prune.method scratch (fresh weights)",
        ),
    ]


def launcher_checks(la: dict) -> list[tuple[bool, str]]:
    return [
        (la["kind"] in ("local", "slurm"), "launcher.kind must be local or slurm"),
        (
            all(isinstance(la[k], int) and la[k] >= 0 for k in ("gpus_per_job", "cpus_per_job", "time", "requeues")),
            "launcher.gpus_per_job, cpus_per_job, time (minutes) and requeues must be integers >= 0",
        ),
        (isinstance(la["signal_s"], int) and la["signal_s"] >= 1, "launcher.signal_s must be an integer >= 1"),
        (
            isinstance(la["sbatch"], list)
            and all(isinstance(x, str) and "=" in x and x.split("=", 1)[0].strip() for x in la["sbatch"]),
            "launcher.sbatch must be a list of KEY=VALUE sbatch options",
        ),
    ]


def complete(cfg: dict) -> dict:
    """Fill keys a newer version added with its preset's defaults (a run made by an older version keeps
    every value it has)."""
    ref = PRESETS.get(cfg.get("preset") or "", _BASE)

    def fill(c, r):
        for k, v in r.items():
            if k not in c:
                c[k] = copy.deepcopy(v)
            elif isinstance(v, dict) and isinstance(c[k], dict):
                fill(c[k], v)

    fill(cfg, ref)
    return cfg


def single_stage(cfg: dict) -> bool:
    """The paper's single-stage variant (Appendix A): every group's model trains from scratch; no stage 1, no
    control."""
    return bool(cfg.get("finetune", {}).get("single_stage"))


def shared_trunk(cfg: dict) -> bool:
    """Whether the group models share one trunk (``finetune.trunk shared``, ``method/trunk.py``); a config
    written before the key existed is ``separate``."""
    return (cfg.get("finetune") or {}).get("trunk", "separate") == "shared"


def trunk_split(cfg: dict, groups: int) -> tuple[int, int]:
    """With a shared trunk, (the trunk's steps, each decoder's steps) for ``groups`` non-empty groups: each group
    gives r = round(finetune.trunk_share x finetune.steps) of its steps to the trunk, so N r and S - r, together
    N S, what N separate fine-tunes train (``method/trunk.py``)."""
    s = cfg["finetune"]["steps"]
    r = round(cfg["finetune"].get("trunk_share", 0.5) * s)
    return groups * r, s - r


def model_arch(cfg: dict) -> dict:
    """The architecture a run's models are built from and recorded with: its ``model`` section, plus the
    timestep scale when ``model.rescale_timesteps`` is set (the network then sees t * 1000 / T, as
    improved-diffusion's models were trained)."""
    arch = dict(cfg["model"])
    if arch.get("rescale_timesteps"):
        arch["time_scale"] = 1000.0 / cfg["diffusion"]["steps"]
    return arch


def config_hash(cfg: dict) -> str:
    """The experiment's identity: every setting except where its jobs run (``launcher``) and which steps of stage 1
    are kept as milestones (``train.keep``: the weights are the same)."""
    what = {k: v for k, v in cfg.items() if k != "launcher"}
    if isinstance(what.get("train"), dict):
        what["train"] = {k: v for k, v in what["train"].items() if k != "keep"}
    return hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
