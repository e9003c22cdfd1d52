"""Starting from a trained base: improved-diffusion checkpoints converted to our UNet, and forks sharing a stage 1.

improved-diffusion's checkpoints cannot be downloaded here, so ``their_layout`` writes down their UNet's tensor
names and shapes from its published architecture (improved_diffusion/unet.py: ``in_layers``/``emb_layers``/
``out_layers`` per ResBlock, a Conv1d ``qkv`` and ``proj_out`` per attention block, ``out.0``/``out.2``),
independently of the converter under test. Its parameter count for the cifar10 preset is their published
model's.
"""

import json
import sqlite3

import pytest
import torch

from core import config as C
from core.config import model_arch
from core.model.iddpm import convert, qkv_to_chunks
from core.model.unet import AttentionBlock, build_unet
from tests.conftest import assert_clean_error, run_cli


def their_layout(m: dict, scale_shift: bool = True) -> dict[str, tuple]:
    """improved-diffusion's UNetModel state-dict names and shapes for model config ``m``."""
    mc, emb, shapes = m["model_channels"], 4 * m["model_channels"], {}

    def pair(name, w):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = tuple(w), (w[0],)

    def res(p, cin, cout):
        pair(f"{p}.in_layers.0", (cin,))
        pair(f"{p}.in_layers.2", (cout, cin, 3, 3))
        pair(f"{p}.emb_layers.1", ((2 if scale_shift else 1) * cout, emb))
        pair(f"{p}.out_layers.0", (cout,))
        pair(f"{p}.out_layers.3", (cout, cout, 3, 3))
        if cin != cout:
            pair(f"{p}.skip_connection", (cout, cin, 1, 1))

    def attn(p, c):
        pair(f"{p}.norm", (c,))
        pair(f"{p}.qkv", (3 * c, c, 1))
        pair(f"{p}.proj_out", (c, c, 1))

    pair("time_embed.0", (emb, mc))
    pair("time_embed.2", (emb, emb))
    pair("input_blocks.0.0", (mc, m["in_channels"], 3, 3))
    attn_ds = {m["image_size"] // r for r in m["attention_resolutions"]}
    chans, ch, ds, i = [mc], mc, 1, 1
    mult = m["channel_mult"]
    for level, k in enumerate(mult):
        for _ in range(m["num_res_blocks"]):
            res(f"input_blocks.{i}.0", ch, k * mc)
            ch = k * mc
            if ds in attn_ds:
                attn(f"input_blocks.{i}.1", ch)
            chans.append(ch)
            i += 1
        if level != len(mult) - 1:
            pair(f"input_blocks.{i}.0.op", (ch, ch, 3, 3))
            chans.append(ch)
            i, ds = i + 1, ds * 2
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    o = 0
    for level, k in list(enumerate(mult))[::-1]:
        for j in range(m["num_res_blocks"] + 1):
            res(f"output_blocks.{o}.0", ch + chans.pop(), k * mc)
            ch, nxt = k * mc, 1
            if ds in attn_ds:
                attn(f"output_blocks.{o}.1", ch)
                nxt = 2
            if level and j == m["num_res_blocks"]:
                pair(f"output_blocks.{o}.{nxt}.conv", (ch, ch, 3, 3))
                ds //= 2
            o += 1
    pair("out.0", (ch,))
    pair("out.2", (m["in_channels"] * (2 if m["learn_sigma"] else 1), ch, 3, 3))
    return shapes


def their_state_dict(m: dict, seed: int = 0, **kw) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in their_layout(m, **kw).items()}


# the tiny-shaped improved-diffusion model the end-to-end tests import (GroupNorm(32) needs 32-channel multiples)
SMALL = [
    "-S",
    "model.model_channels=32",
    "-S",
    "model.channel_mult=[1,2]",
    "-S",
    "model.attention_resolutions=[16]",
    "-S",
    "model.num_heads=2",
    "-S",
    "diffusion.steps=100",
]
FAST = [
    *SMALL,
    "-S",
    "train.steps=50",
    "-S",
    "train.batch_size=8",
    "-S",
    "finetune.steps=3",
    "-S",
    "finetune.batch_size=8",
    "-S",
    "schedule.groups=2",
    "-S",
    "prune.rounds=1",
    "-S",
    "prune.images=16",
    "-S",
    "prune.eval_images=16",
    "-S",
    "prune.batches=1",
    "-S",
    "prune.batch_size=8",
    "-S",
    "sample.n=4",
    "-S",
    "sample.steps=4",
    "-S",
    "eval.loss_images=16",
    "-S",
    "eval.fid_n=8",
    "-S",
    "eval.steps=3",
    "-S",
    "eval.bootstrap=20",
    "-S",
    "eval.ref_n=64",
    "-S",
    "control.enabled=false",
]


def small_model_cfg() -> dict:
    return C.resolve("tiny", None, [s for s in SMALL if s != "-S"])["model"]


def test_their_layout_of_the_cifar10_preset_has_their_published_parameter_count():
    shapes = their_layout(C.preset("cifar10")["model"])
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 52_546_438
    assert sum(p.numel() for p in build_unet(C.preset("cifar10")["model"]).parameters()) == 52_546_438


@pytest.mark.parametrize("preset", ["cifar10", "imagenet64"])
def test_the_full_size_presets_take_their_published_models(preset):
    """cifar10_uncond_50M_500K.pt and imagenet64_uncond_100M_1500K.pt have this layout (their README's flags)."""
    cfg = C.preset(preset)
    theirs = {k: torch.zeros(s) for k, s in their_layout(cfg["model"]).items()}
    model = build_unet(model_arch({**cfg, "model": {**cfg["model"], "rescale_timesteps": True}}))
    ours = convert(theirs, model, preset)
    assert set(ours) == set(model.state_dict()) and sum(t.numel() for t in ours.values()) == sum(
        t.numel() for t in theirs.values()
    )


def test_every_tensor_of_theirs_lands_once_in_ours():
    m = small_model_cfg()
    theirs, total = {}, 0
    for k, s in their_layout(m).items():  # every element a distinct value
        n = torch.Size(s).numel()
        theirs[k] = torch.arange(total, total + n, dtype=torch.float64).reshape(s)
        total += n
    ours = convert(theirs, build_unet(m).double(), "tiny")
    values = torch.cat([t.flatten() for t in ours.values()]).sort().values
    assert torch.equal(values, torch.arange(total, dtype=torch.float64))  # nothing lost, nothing twice
    assert torch.equal(ours["input_blocks.0.layer.weight"], theirs["input_blocks.0.0.weight"])
    assert torch.equal(ours["out_conv.weight"], theirs["out.2.weight"])
    assert torch.equal(ours["out_norm.bias"], theirs["out.0.bias"])
    emb = theirs["input_blocks.1.0.emb_layers.1.weight"]  # [scale | shift]
    c = emb.shape[0] // 2
    assert torch.equal(ours["input_blocks.1.0.emb_scale.weight"], emb[:c])
    assert torch.equal(ours["input_blocks.1.0.emb_shift.weight"], emb[c:])
    assert torch.equal(ours["input_blocks.1.0.out_conv.weight"], theirs["input_blocks.1.0.out_layers.3.weight"])
    assert ours["middle_block.1.proj.weight"].shape[-2:] == (1, 1)


def test_qkv_rows_per_head_become_chunk_ordered():
    heads, d = 2, 3
    # their row h*3d + j*d + i holds the value 100*j + 10*h + i (j = 0, 1, 2: q, k, v)
    rows = torch.tensor(
        [100 * j + 10 * h + i for h in range(heads) for j in range(3) for i in range(d)], dtype=torch.float32
    )
    out = qkv_to_chunks(rows[:, None, None], heads)[:, 0, 0]
    want = torch.tensor(
        [100 * j + 10 * h + i for j in range(3) for h in range(heads) for i in range(d)], dtype=torch.float32
    )
    assert torch.equal(out, want)


def their_attention(x, sd, prefix, heads):
    """improved-diffusion's AttentionBlock.forward (per-head qkv reshape, QKVAttention), written out."""
    import math

    b, c, *sp = x.shape
    h = torch.nn.functional.group_norm(
        x.reshape(b, c, -1).float(), 32 if c % 32 == 0 else c, sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"]
    )
    qkv = torch.nn.functional.conv1d(h, sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"])
    qkv = qkv.reshape(b * heads, -1, qkv.shape[2])
    ch = qkv.shape[1] // 3
    q, k, v = torch.split(qkv, ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, qkv.shape[-1])
    out = torch.nn.functional.conv1d(a, sd[f"{prefix}.proj_out.weight"], sd[f"{prefix}.proj_out.bias"])
    return x + out.reshape(b, c, *sp)


def test_converted_attention_computes_what_theirs_computed():
    m = {**small_model_cfg(), "norm_groups": 32}
    theirs = their_state_dict(m, seed=1)
    model = build_unet(m)
    model.load_state_dict(convert(theirs, model, "tiny"))
    block = model.middle_block[1]
    assert isinstance(block, AttentionBlock) and block.num_heads == 2
    x = torch.randn(3, block.norm.num_channels, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), their_attention(x, theirs, "middle_block.1", 2), atol=1e-5)
        wrong = their_attention(
            x, {**theirs, "middle_block.1.qkv.weight": theirs["middle_block.1.qkv.weight"]}, "middle_block.1", 1
        )  # another head count gives another function
        assert not torch.allclose(block(x), wrong, atol=1e-3)


def test_a_model_with_rescale_timesteps_feeds_t_times_1000_over_T_to_its_embedding():
    cfg = C.resolve("tiny", None, ["model.rescale_timesteps=true", "diffusion.steps=4000"])
    arch = model_arch(cfg)
    assert arch["time_scale"] == 0.25
    scaled, plain = build_unet(arch, seed=0).eval(), build_unet(cfg["model"] | {"rescale_timesteps": False}, seed=0)
    for p in plain.parameters():  # zero-initialised output layers would hide any difference
        torch.nn.init.normal_(p, std=0.05)
    scaled.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([400, 3999])
    with torch.no_grad():
        assert torch.allclose(scaled(x, t), plain.eval()(x, t.float() * 0.25), atol=1e-6)
        assert not torch.allclose(scaled(x, t), plain(x, t), atol=1e-3)
    with pytest.raises(ValueError):  # a rescaled model cannot be built without knowing T
        build_unet(cfg["model"])


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _save(sd, path):
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("list", "not a state dict"),
        ("truncated", "cannot read"),
        ("pickle", "holds Python objects other than tensors and plain data; refused"),
        ("other_size", "input blocks"),
        ("no_sigma", "does not learn the variance"),
        ("missing", "has no"),
        ("class_cond", "class-conditional"),
        ("scale_shift", "use_scale_shift_norm=False"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line_and_nothing_is_written(tmp_path, runs_dir, case, expect):
    m = small_model_cfg()
    sd = their_state_dict(m)
    path = tmp_path / "model.pt"
    if case == "list":
        _save([1, 2, 3], path)
    elif case == "truncated":
        _save(sd, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "pickle":  # a payload: its load would run a command
        _save({"x": _Payload(tmp_path / "MARKER")}, path)
    elif case == "other_size":  # a model of another image size: one more level
        _save(their_state_dict({**m, "channel_mult": [1, 2, 2]}), path)
    elif case == "no_sigma":
        _save(their_state_dict({**m, "learn_sigma": False}), path)
    elif case == "missing":
        _save({k: v for k, v in sd.items() if k != "middle_block.1.qkv.weight"}, path)
    elif case == "class_cond":
        _save({**sd, "label_emb.weight": torch.zeros(10, 128)}, path)
    elif case == "scale_shift":
        _save(their_state_dict(m, scale_shift=False), path)
    p = run_cli("import", "imp", "--from-iddpm", path, "--preset", "tiny", *SMALL, "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert expect in p.stderr
    assert not (runs_dir / "imp").exists() and not (tmp_path / "MARKER").exists()
    db = runs_dir / "stepadapt.db"
    if db.exists():
        assert sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


def test_fork_of_a_missing_or_unfinished_base_is_refused(runs_dir):
    rd = ["--runs-dir", runs_dir]
    assert_clean_error(run_cli("fork", "nosuch", "f1", *rd))
    run_cli(
        "train",
        "--preset",
        "tiny",
        "--name",
        "half",
        "--train-steps",
        "2",
        *SMALL,
        "-S",
        "train.batch_size=4",
        *rd,
        check=0,
    )
    cfg_file = runs_dir / "half" / "config.json"  # as if its training had stopped at step 2 of 50
    cfg = json.loads(cfg_file.read_text())
    cfg["train"]["steps"] = 50
    cfg_file.write_text(json.dumps(cfg))
    p = run_cli("fork", "half", "f2", *rd)
    assert_clean_error(p)
    assert "unfinished" in p.stderr and not (runs_dir / "f2").exists()
    p = run_cli("fork", "half", "f3", "-S", "model.dropout=0.1", *rd)
    assert_clean_error(p)
    assert "model.dropout cannot change" in p.stderr


def test_imported_base_goes_through_the_method_and_two_forks_compare_on_one_base(tmp_path, runs_dir):
    """An improved-diffusion-layout checkpoint becomes a run's stage 1 (`import`); a fork of it runs prune ->
    fine-tune -> control -> sample -> eval with standard (Inception-file) FID; a second fork pruned by another
    method shares the same base; the two are compared in one table and no run ever trains a stage 1; a third
    fork replays the first's proxy decisions exactly."""
    m = {**small_model_cfg(), "norm_groups": 32}
    ckpt = _save(their_state_dict(m, seed=3), tmp_path / "iddpm_tiny_uncond.pt")
    inception = standin_inception(tmp_path)
    rd = ["--runs-dir", runs_dir]
    p = run_cli("import", "imp", "--from-iddpm", ckpt, "--preset", "tiny", *FAST, *rd, check=0)
    assert "stepadapt resume imp" in p.stdout
    meta = json.loads((runs_dir / "imp" / "meta.json").read_text())
    assert meta["base"]["origin"] == "import" and meta["base"]["format"] == "improved-diffusion"
    base = torch.load(runs_dir / "imp" / "models/base.pt", weights_only=True)
    assert base["arch"]["rescale_timesteps"] and base["arch"]["time_scale"] == 1000 / 100
    assert base["imported"]["file_sha256"] == meta["base"]["file_sha256"]

    p = run_cli(
        "run",
        "--base",
        "imp",
        "--name",
        "prox",
        "--method",
        "proxy",
        "--inception",
        inception,
        "-S",
        "control.enabled=true",
        *rd,
    )
    assert p.returncode == 0, p.stderr
    run = runs_dir / "prox"
    ev = json.loads((run / "eval.json").read_text())
    assert {"base", "control", "progressive"} <= set(ev["models"])  # the control continued the imported model
    assert ev["models"]["progressive"]["fid_extractor"].startswith("inception-")
    g0 = torch.load(next((run / "models").glob("group*.pt")), weights_only=True)
    assert g0["arch"]["time_scale"] == 10.0  # group models keep the imported model's timestep scale

    run_cli("fork", "imp", "mag", "--method", "magnitude", "-S", f"eval.inception={inception}", *rd, check=0)
    run_cli("resume", "mag", *rd, check=0)
    for name in ("prox", "mag"):
        fork_file, parent_file = runs_dir / name / "models/base.pt", runs_dir / "imp/models/base.pt"
        assert fork_file.read_bytes() == parent_file.read_bytes()
        assert fork_file.stat().st_ino != parent_file.stat().st_ino  # a copy, never a hard link
        assert json.loads((runs_dir / name / "meta.json").read_text())["parent"] == "imp"
    stages = sqlite3.connect(runs_dir / "stepadapt.db").execute("select distinct stage from jobs").fetchall()
    assert ("base",) not in stages and ("prune",) in stages  # no run trained a stage 1

    p = run_cli("compare", "prox", "mag", "--json", *rd, check=0)
    data = json.loads(p.stdout)
    assert not data["bases_differ"] and len({b["sha256"] for b in data["bases"].values()}) == 1
    assert data["bases"]["mag"]["origin"] == "fork of imp"
    assert {(r["run"], r["model"]) for r in data["rows"]} >= {("prox", "progressive"), ("mag", "progressive")}
    assert data["config_differences"]["prune.method"] == ["proxy", "magnitude"]
    assert "share one stage 1" in run_cli("compare", "prox", "mag", *rd, check=0).stdout

    # a third fork replays the first fork's recorded proxy decisions: same base, same prompts, same plans
    run_cli("fork", "imp", "rep", "--method", "proxy", *rd, check=0)
    p = run_cli("prune", "rep", "--method", "proxy", "--replay", "prox", *rd)
    assert p.returncode == 0, p.stderr
    for f in (run / "prune").glob("group*.json"):
        assert json.loads(f.read_text())["plan"] == json.loads((runs_dir / "rep/prune" / f.name).read_text())["plan"]

    assert "shared with imp" in run_cli("show", "mag", *rd, check=0).stdout
    rows = {r["name"]: r for r in json.loads(run_cli("runs", "--json", *rd, check=0).stdout)}
    assert rows["mag"]["parent"] == "imp" and rows["imp"]["base"] == "imported"


def test_compare_flags_runs_whose_bases_differ(runs_dir):
    rd = ["--runs-dir", runs_dir]
    tiny = [
        "-S",
        "model.model_channels=16",
        "-S",
        "model.channel_mult=[1,2]",
        "-S",
        "model.attention_resolutions=[16]",
        "-S",
        "model.num_heads=2",
        "-S",
        "diffusion.steps=100",
        "-S",
        "train.batch_size=4",
    ]
    for seed in (0, 1):
        run_cli(
            "train",
            "--preset",
            "tiny",
            "--name",
            f"s{seed}",
            "--train-steps",
            "2",
            "--seed",
            str(seed),
            *tiny,
            *rd,
            check=0,
        )
    for name in ("s0", "s1"):  # a minimal evaluation file, as the eval stage writes it
        (runs_dir / name / "eval.json").write_text(
            json.dumps({"models": {"base": {"macs": 1.0, "params": 1, "loss": 0.1, "fid": 1.0, "train_steps": 2}}})
        )
    p = run_cli("compare", "s0", "s1", *rd, check=0)
    assert "different stage-1 models" in p.stdout


def standin_inception(tmp_path):
    """A small TorchScript file in the format clean-fid's InceptionV3W loads (``layers`` mapping a 299 px
    image to 2048 features, ``forward(x, return_features)``): the Inception path without the download."""

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layers = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 2048), torch.nn.Tanh()
            )

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return self.layers(x)

    path = tmp_path / "standin" / "inception-2015-12-05.pt"
    path.parent.mkdir()
    torch.jit.script(StandIn()).save(str(path))
    return path


def test_a_fork_of_a_milestone_has_exactly_the_weights_a_run_of_that_many_steps_has(runs_dir):
    """train.keep keeps stage 1 at chosen steps; fork RUN@STEP starts there: its base is the milestone's EMA weights,
    which are those of a run trained for STEP steps alone (same seed), and its stage 1 is STEP steps long."""
    from tests.conftest import MICRO

    rd = ["--runs-dir", runs_dir]
    run_cli(
        "train",
        "--preset",
        "tiny",
        "--name",
        "long",
        *MICRO,
        "--train-steps",
        "8",
        "-S",
        "train.keep=3,5",
        "-S",
        "train.log_every=1",
        *rd,
        check=0,
    )
    run_cli("train", "--preset", "tiny", "--name", "short", *MICRO, "--train-steps", "5", *rd, check=0)
    p = run_cli("fork", "long@5", "f5", *rd, check=0)
    assert "a fork of long at step 5" in p.stdout + p.stderr
    load = lambda name, f="models/base.pt": torch.load(runs_dir / name / f, weights_only=True)
    fork, short, final = load("f5"), load("short"), load("long")
    assert fork["step"] == 5 and all(torch.equal(fork["state"][k], short["state"][k]) for k in short["state"])
    assert any(not torch.equal(fork["state"][k], final["state"][k]) for k in final["state"])
    state, short_state = load("f5", "checkpoints/base.pt"), load("short", "checkpoints/base.pt")
    assert state["step"] == 5 and all(
        torch.equal(state["model"][k], short_state["model"][k]) for k in short_state["model"]
    )
    assert torch.equal(state["rng"]["torch"], short_state["rng"]["torch"])
    meta, cfg = (json.loads((runs_dir / "f5" / f).read_text()) for f in ("meta.json", "config.json"))
    assert meta["base"]["run"] == "long" and meta["base"]["step"] == 5 and cfg["train"]["steps"] == 5
    assert [json.loads(x)["step"] for x in (runs_dir / "f5" / "metrics/base.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
    ]  # the parent's curve up to the milestone
    show = run_cli("show", "f5", *rd, check=0).stdout
    assert "shared with long@5" in show
    for bad, says in (
        ("long@4", "kept no milestone at step 4 (kept: 3, 5)"),
        ("long@x", "RUN@STEP takes a step"),
        ("short@2", "none kept; see train.keep"),
    ):
        p = run_cli("fork", bad, "g", *rd)
        assert_clean_error(p)
        assert says in p.stderr, p.stderr
    assert not (runs_dir / "g").exists()
