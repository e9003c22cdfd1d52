"""Bases from diffusers: a ``UNet2DModel`` folder imported as our UNet (same outputs), the whole method on it, and a
run's models exported back as folders ``UNet2DModel.from_pretrained`` loads.

Every diffusers model here is built with random weights and saved inside the test (nothing is downloaded); the
DDPM-like one has the switches google/ddpm-cifar10-32 has (sin before cos, freq_shift 1, right/bottom downsample
padding, GroupNorm eps 1e-6, one attention head per block, no learned variance).
"""

import json
import sqlite3

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.model.unet2d import load_folder
from tests.conftest import assert_clean_error, run_cli
from tests.test_bases import standin_inception

diffusers = pytest.importorskip("diffusers")

DDPM_LIKE = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
)
# IDDPM-like: scale-shift resnets, heads of 16 channels, learned variance (6 outputs), attention at two levels
IDDPM_LIKE = dict(
    sample_size=16,
    in_channels=3,
    out_channels=6,
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=16,
    resnet_time_scale_shift="scale_shift",
    attn_norm_num_groups=8,
)
FAST = [
    f"-S{kv}"
    for kv in (
        "train.steps=50",
        "train.batch_size=8",
        "finetune.steps=3",
        "finetune.batch_size=8",
        "schedule.groups=2",
        "prune.rounds=1",
        "prune.images=16",
        "prune.eval_images=16",
        "prune.batches=1",
        "prune.batch_size=8",
        "sample.n=4",
        "sample.steps=4",
        "eval.loss_images=16",
        "eval.fid_n=8",
        "eval.steps=3",
        "eval.bootstrap=20",
        "eval.ref_n=64",
    )
]


def make_unet(seed: int = 0, **kw):
    """A random-weight UNet2DModel (every weight, zero-initialised ones too, drawn from N(0, 0.05^2) on top)."""
    torch.manual_seed(seed)
    m = diffusers.UNet2DModel(**{**DDPM_LIKE, **kw})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def save(model, folder, scheduler: dict | None = None):
    model.save_pretrained(str(folder))
    if scheduler is not None:
        (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


@torch.no_grad()
def max_diff(ours, theirs, ts=(0, 1, 137, 500, 999)) -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, ours.in_channels, ours.image_size, ours.image_size, generator=g)
    return max((ours(x, torch.full((3,), t)) - theirs(x, torch.full((3,), t)).sample).abs().max().item() for t in ts)


# -- import ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ddpm", "iddpm"])
def test_an_imported_unet2dmodel_computes_what_diffusers_computes(tmp_path, layout):
    if layout == "ddpm":  # no scheduler file: DDPMScheduler's defaults (DDPM's)
        theirs = make_unet()
        folder, want = (
            save(theirs, tmp_path / "m"),
            {"steps": 1000, "noise_schedule": "linear", "fixed_variance": "small"},
        )
    else:  # a pipeline layout (unet/ + scheduler/), older attention names (query/key/value/proj_attn)
        theirs = make_unet(1, **IDDPM_LIKE)
        save(theirs, tmp_path / "p" / "unet")
        f = tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors"
        old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        sd = {}
        for k, v in load_file(str(f)).items():
            for new, was in old.items():
                k = k.replace(f".{new}.", f".{was}.") if ".attentions." in k else k
            sd[k] = v
        save_file(sd, str(f))
        (tmp_path / "p" / "scheduler").mkdir()
        sched = {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "variance_type": "learned_range"}
        (tmp_path / "p" / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
        folder, want = tmp_path / "p", {"steps": 1000, "noise_schedule": "cosine", "fixed_variance": "large"}
    ours, arch, diffusion, _ = load_folder(folder)
    assert diffusion == want and arch["family"] == "diffusers"
    assert max_diff(ours, theirs) < 1e-5


def test_the_switches_change_what_the_network_computes(tmp_path):
    """Each diffusers switch matters: with IDDPM's value in its place the imported model no longer matches."""
    from core.model.unet import build_unet

    theirs = make_unet()
    ours, arch, _, _ = load_folder(save(theirs, tmp_path / "m"))
    for key, iddpm in (("time_flip_sin_to_cos", True), ("time_freq_shift", 0), ("downsample_padding", 1)):
        other = build_unet({**arch, key: iddpm})
        other.load_state_dict(ours.state_dict())
        assert max_diff(other.eval(), theirs) > 1e-3, key


def test_fixed_small_variance_is_the_posterior_variance_and_survives_respacing():
    import numpy as np

    from core.model.diffusion import GaussianDiffusion, betas_for
    from core.model.respace import respaced

    d = GaussianDiffusion(betas_for("linear", 1000), learn_sigma=False, fixed_variance="small")
    x, t = torch.zeros(2, 1, 4, 4), torch.tensor([1, 700])
    out = d.p_mean_variance(lambda x, t: torch.zeros_like(x), x, t)
    assert torch.allclose(out["log_variance"][:, 0, 0, 0], torch.tensor(np.log(d.posterior_variance[[1, 700]])).float())
    r = respaced(d, 10)
    assert r.fixed_variance == "small"
    loss = d.training_losses(lambda x, t: torch.zeros_like(x), torch.zeros(2, 1, 4, 4), t)
    assert "vb" not in loss and torch.equal(loss["loss"], loss["mse"])  # epsilon-only: L_simple


# -- the method, and the way back out ------------------------------------------------------------------------------
def test_the_method_runs_on_a_diffusers_base_and_every_expressible_model_exports(tmp_path, runs_dir):
    """`run --base DIR` imports the folder (no stage 1 trained) and runs prune -> fine-tune -> control -> sample ->
    eval; `export --to-diffusers` writes folders that from_pretrained loads and that compute what ours compute,
    names the models it cannot write, and a fork shares the imported base."""
    from core.method.artifacts import load_progressive, load_unet

    folder = save(make_unet(2), tmp_path / "ddpm-digits")
    inception = standin_inception(tmp_path)
    rd = ["--runs-dir", runs_dir]
    p = run_cli("run", "--base", folder, "--name", "d", "--method", "magnitude", "--inception", inception,
                "--preset", "tiny", *FAST, *rd)  # fmt: skip
    assert p.returncode == 0, p.stderr
    run = runs_dir / "d"
    meta, cfg = json.loads((run / "meta.json").read_text()), json.loads((run / "config.json").read_text())
    assert meta["base"]["format"] == "diffusers" and cfg["model"]["family"] == "diffusers"
    assert cfg["diffusion"]["fixed_variance"] == "small" and not cfg["model"]["learn_sigma"]
    ev = json.loads((run / "eval.json").read_text())
    assert {"base", "control", "progressive"} <= set(ev["models"])
    stages = sqlite3.connect(runs_dir / "stepadapt.db").execute("select distinct stage from jobs").fetchall()
    assert ("base",) not in stages and ("prune",) in stages and ("finetune",) in stages

    out = tmp_path / "export"
    p = run_cli("export", "d", "--to-diffusers", out, *rd, check=0)
    table = json.loads((out / "routing.json").read_text())
    assert table["models"]["base"]["folder"] == "base" and table["models"]["control"]["folder"] == "control"
    assert sorted(t for e in table["groups"] for r in e["timesteps"] for t in range(r[0], r[1] + 1)) == list(
        range(1000)
    )
    prog = load_progressive(run / "models" / "progressive.pt")
    ours = {"base": load_unet(run / "models/base.pt"), "control": load_unet(run / "models/control.pt")}
    ours |= {f"group{e['group']:02d}": prog.models[str(e["group"])] for e in table["groups"]}
    readme = (out / "README.md").read_text()
    for name, entry in [*table["models"].items(), *((f"group{e['group']:02d}", e) for e in table["groups"])]:
        if entry["folder"] is None:  # not expressible: said why, in the output and the README, and not written
            assert entry["reason"] in p.stderr and entry["reason"] in readme and not (out / name).exists()
            continue
        theirs = diffusers.UNet2DModel.from_pretrained(str(out / entry["folder"])).eval()
        assert max_diff(ours[name].eval(), theirs) < 1e-5, name
    sched = diffusers.DDPMScheduler.from_pretrained(str(out))
    assert sched.config.variance_type == "fixed_small" and sched.config.num_train_timesteps == 1000

    assert_clean_error(run_cli("export", "d", "--to-diffusers", out, *rd))  # not into a folder with files

    run_cli("fork", "d", "f", "-S", "prune.method=random", *rd, check=0)
    fork = json.loads((runs_dir / "f" / "config.json").read_text())
    assert fork["model"] == cfg["model"] and fork["diffusion"] == cfg["diffusion"]


def test_export_writes_improved_diffusion_family_models_too(tmp_path):
    """A model of the tiny preset (IDDPM's layout, learned variance, cosine betas) exports with its scheduler, and
    re-imports as the same settings; an imported improved-diffusion model (t * 1000/T) is refused with the reason."""
    from core import config as C
    from core.model.to_diffusers import export_unet
    from core.model.unet import build_unet

    cfg = C.preset("tiny")
    ours = build_unet(C.model_arch(cfg), seed=0)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    res = export_unet(ours, C.model_arch(cfg), cfg["diffusion"], tmp_path / "tiny")
    theirs = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "tiny")).eval()
    assert res["max_abs_diff"] < 1e-5 and max_diff(ours.eval(), theirs) < 1e-5
    _, arch, diffusion, _ = load_folder(tmp_path / "tiny")
    assert diffusion == {"steps": 1000, "noise_schedule": "cosine", "fixed_variance": "large"} and arch["learn_sigma"]

    arch = {**C.model_arch(cfg), "rescale_timesteps": True, "time_scale": 0.25}
    res = export_unet(build_unet(arch), arch, cfg["diffusion"], tmp_path / "scaled")
    assert "rescale_timesteps" in res["reason"] and not (tmp_path / "scaled").exists()


# -- bad input ------------------------------------------------------------------------------------------------------
def _bad(case: str, tmp_path):
    folder = tmp_path / "m"
    m = make_unet()
    if case == "other_class":
        diffusers.AutoencoderKL(block_out_channels=(32,), norm_num_groups=8).save_pretrained(str(folder))
    elif case == "conditional":
        down, up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
        diffusers.UNet2DConditionModel(
            block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32, layers_per_block=1,
            down_block_types=down, up_block_types=up,
        ).save_pretrained(str(folder))  # fmt: skip
    elif case == "class_labels":
        make_unet(num_class_embeds=10).save_pretrained(str(folder))
    else:
        save(m, folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if case == "missing_weights":
        weights.unlink()
    elif case == "pickle_only":
        torch.save(m.state_dict(), folder / "diffusion_pytorch_model.bin")
        weights.unlink()
    elif case == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "config_mismatch":  # the config says 2 resnets per level; the weights have 1
        c = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**c, "layers_per_block": 2}))
    elif case == "width_mismatch":
        c = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**c, "block_out_channels": [32, 96]}))
    elif case == "v_prediction":
        (folder / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    elif case == "other_scheduler":
        (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler"}))
    elif case == "scaled_linear":
        (folder / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "scaled_linear"}))
    return folder


@pytest.mark.parametrize(
    "case, expect",
    [
        ("other_class", "not a UNet2DModel"),
        ("conditional", "conditional UNet"),
        ("class_labels", "class-conditional"),
        ("missing_weights", "no weights file"),
        ("pickle_only", "safetensors only"),
        ("truncated", "cannot read"),
        ("config_mismatch", "config and weights differ"),
        ("width_mismatch", "config and weights differ"),
        ("v_prediction", "prediction_type"),
        ("other_scheduler", "unsupported scheduler EulerDiscreteScheduler"),
        ("scaled_linear", "beta_schedule 'scaled_linear'"),
    ],
)
def test_a_folder_that_does_not_fit_is_refused_in_one_line_and_nothing_is_written(tmp_path, runs_dir, case, expect):
    folder = _bad(case, tmp_path)
    p = run_cli("import", "imp", "--from-diffusers", folder, "--preset", "tiny", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert expect in p.stderr, p.stderr
    assert not (runs_dir / "imp").exists() and not [d for d in runs_dir.iterdir() if d.is_dir()]
    db = runs_dir / "stepadapt.db"
    if db.exists():
        assert sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


def test_a_diffusers_models_attention_heads_are_never_cut_apart():
    """Pruning a diffusers-family model to half its MACs never changes an attention head's size (heads go
    whole or not at all, and whole heads stay: UNet2DModel's config cannot express fewer): its units have no
    head dimensions, and every attention block of the pruned model keeps its heads and head size. The same
    layout as improved-diffusion's family does have head-dimension units."""
    from core.config import resolve
    from core.method.importance import make_importance
    from core.method.prune import prune_to_budget
    from core.method.units import units_of
    from core.model import unet as U
    from core.model.macs import count

    cfg = resolve("tiny", None, ["model.attention_resolutions=[16]"])["model"]
    ours, theirs = U.build_unet({**cfg, "family": "iddpm"}), U.build_unet({**cfg, "family": "diffusers"})
    assert any(u.kind == "heads" for u in units_of(ours))
    assert not any(u.kind == "heads" for u in units_of(theirs))
    heads = {n: (m.num_heads, m.proj.in_channels) for n, m in theirs.named_modules() if isinstance(m, U.AttentionBlock)}
    full = count(theirs, cfg["image_size"], cfg["in_channels"])["macs"]
    pruned, plan, report = prune_to_budget(theirs, make_importance("magnitude"), 0.5 * full)
    assert report["macs"] <= 0.5 * full
    after = {n: (m.num_heads, m.proj.in_channels) for n, m in pruned.named_modules() if isinstance(m, U.AttentionBlock)}
    assert after == heads
