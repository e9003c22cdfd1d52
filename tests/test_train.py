import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from core import config as C
from core.method.artifacts import load_unet
from core.method.fields import artifact_fields
from core.model.diffusion import create_diffusion
from core.model.unet import build_unet
from core.runs import create_run
from core.training.data import load_dataset
from core.training.devices import bf16_native
from core.training.loop import TrainSpec, train
from tests.conftest import MICRO, REPO, run_cli


def micro_cfg():
    cfg = C.resolve("tiny", None, list(MICRO[1::2]))
    cfg["model"]["dropout"] = 0.1  # exercise the global RNG (restored on resume)
    return cfg


def spec_for(run, cfg, steps, ckpt_every=1000):
    t = cfg["train"]
    return TrainSpec(
        name="base",
        ckpt=run.ckpt("base"),
        model_out=run.model("base"),
        metrics=run.metrics("base"),
        steps=steps,
        batch_size=t["batch_size"],
        lr=t["lr"],
        ema_decay=t["ema_decay"],
        seed=cfg["seed"],
        log_every=1,
        ckpt_every=ckpt_every,
        extra={"arch": cfg["model"]},
    )


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(runs_dir):
    cfg = micro_cfg()
    data = load_dataset(cfg)
    diff = create_diffusion(cfg)
    a = create_run(cfg, "straight", runs_dir)
    train(spec_for(a, cfg, 6), build_unet(cfg["model"], seed=0), diff, data, progress=False)
    b = create_run(cfg, "resumed", runs_dir)
    train(spec_for(b, cfg, 3), build_unet(cfg["model"], seed=0), diff, data, progress=False)
    torch.manual_seed(12345)  # whatever happens in between must not matter
    train(spec_for(b, cfg, 6), build_unet(cfg["model"], seed=0), diff, data, progress=False, resume=True)
    sa = torch.load(a.ckpt("base"), weights_only=True)
    sb = torch.load(b.ckpt("base"), weights_only=True)
    assert sa["step"] == sb["step"] == 6
    for key in ("model", "ema"):
        for name, tensor in sa[key].items():
            assert torch.equal(tensor, sb[key][name]), f"{key}.{name} differs"
    # metrics were not duplicated by the resume
    steps = [json.loads(l)["step"] for l in b.metrics("base").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # the usable model is the EMA and loads on its own
    m = load_unet(b.model("base"))
    assert all(torch.equal(p, sb["ema"][n]) for n, p in m.state_dict().items())


def test_a_restart_before_the_first_checkpoint_keeps_no_stale_metrics_or_partial_files(runs_dir):
    """A job killed before its first checkpoint left metric lines and a half-written checkpoint; training
    again from step 0 logs each step once and sweeps the partial file."""
    cfg = micro_cfg()
    run = create_run(cfg, "restart", runs_dir)
    spec = spec_for(run, cfg, 3)
    spec.metrics.parent.mkdir(parents=True, exist_ok=True)
    spec.metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2)))
    spec.ckpt.parent.mkdir(parents=True, exist_ok=True)
    partial = spec.ckpt.parent / ".base.pt.k3j9x.tmp"
    partial.write_bytes(b"half a checkpoint")
    train(spec, build_unet(cfg["model"], seed=0), create_diffusion(cfg), load_dataset(cfg), progress=False)
    assert [json.loads(l)["step"] for l in spec.metrics.read_text().splitlines()] == [1, 2, 3]
    assert not partial.exists() and spec.ckpt.exists()


def test_tiny_loss_falls_on_digits(runs_dir):
    cfg = C.resolve("tiny", None, [*MICRO[1::2], "diffusion.steps=1000", "train.batch_size=16"])
    run = create_run(cfg, "fall", runs_dir)
    spec = spec_for(run, cfg, 120)
    spec.log_every = 20
    train(spec, build_unet(cfg["model"], seed=0), create_diffusion(cfg), load_dataset(cfg), progress=False)
    mse = [json.loads(l)["mse"] for l in run.metrics("base").read_text().splitlines()]
    assert len(mse) == 6
    assert mse[-1] < 0.5 * mse[0], mse


def test_sigint_checkpoints_and_resume_completes(runs_dir):
    """`train` is a tracked job: while it runs, `runs` shows the run running with its progress; Ctrl-C
    checkpoints and leaves it killed (exit 130), resumable; the resume ends the job succeeded."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [
        sys.executable,
        "-m",
        "stepadapt_cli.main",
        "train",
        "--preset",
        "tiny",
        "--name",
        "sig",
        "--runs-dir",
        str(runs_dir),
        "--train-steps",
        "100000",
        *MICRO,
        "-S",
        "train.log_every=1",
    ]
    p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = runs_dir / "sig" / "metrics" / "base.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    for _ in range(60):  # its progress reaches the store with the job's next heartbeat (every few seconds)
        shown = json.loads(run_cli("show", "sig", "--json", "--runs-dir", runs_dir, check=0).stdout)
        if shown["jobs"] and shown["jobs"][0]["total"]:
            break
        time.sleep(0.5)
    assert shown["run"]["status"] == "running" and shown["stages"]["base"] == "running"
    assert shown["jobs"][0]["stage"] == "base" and shown["jobs"][0]["total"] == 100000
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved" in err
    ck = torch.load(runs_dir / "sig" / "checkpoints" / "base.pt", weights_only=True)
    stopped = ck["step"]
    assert stopped >= 3
    shown = json.loads(run_cli("show", "sig", "--json", "--runs-dir", runs_dir, check=0).stdout)
    assert shown["run"]["status"] == "killed"
    assert [(j["status"], j["exit_code"]) for j in shown["jobs"]] == [("killed", 130)]
    run_cli("train", "--name", "sig", "--runs-dir", runs_dir, "--resume", "--train-steps", stopped + 2, check=0)
    assert torch.load(runs_dir / "sig" / "checkpoints" / "base.pt", weights_only=True)["step"] == stopped + 2
    assert (runs_dir / "sig" / "models" / "base.pt").exists()
    shown = json.loads(run_cli("show", "sig", "--json", "--runs-dir", runs_dir, check=0).stdout)
    assert [j["status"] for j in shown["jobs"]] == ["killed", "succeeded"] and shown["run"]["status"] == "partial"


DDP_SCRIPT = """
import sys
from pathlib import Path
import pytest
import torch
torch.set_num_threads(1)
from core import config as C
from core.training.data import load_dataset
from core.model.diffusion import create_diffusion
from core.training.devices import init_distributed
from core.training.devices import bf16_native
from core.training.loop import TrainSpec, train
from core.model.unet import build_unet

out, accum = Path(sys.argv[1]), int(sys.argv[2])
dev = init_distributed() or torch.device("cpu")
cfg = C.resolve("tiny", None, ["model.model_channels=16", "model.channel_mult=[1,2]",
                               "model.attention_resolutions=[16]", "diffusion.steps=100"])
spec = TrainSpec(name="base", ckpt=out / "ck.pt", model_out=out / "m.pt", metrics=out / "m.jsonl", steps=3,
                 batch_size=8, lr=1e-3, ema_decay=0.5, seed=0, log_every=1, ckpt_every=100, accum=accum,
                 bf16=False)  # fp32: the same mean gradient to rounding (bf16 rounds each micro-batch apart)
train(spec, build_unet(cfg["model"], seed=0), create_diffusion(cfg), load_dataset(cfg), device=dev, progress=False)
"""


def test_ddp_on_two_ranks_and_grad_accumulation_match_one_process(tmp_path):
    """torchrun with 2 CPU ranks (gloo) and accum=2 both train the same weights as one process, batch 8."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    runs = {
        "one": [sys.executable, str(script)],
        "accum": [sys.executable, str(script)],
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
    }
    for name, cmd in runs.items():
        (tmp_path / name).mkdir()
        p = subprocess.run(
            [*cmd, str(tmp_path / name), "2" if name == "accum" else "1"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr[-3000:]
    ref = torch.load(tmp_path / "one" / "m.pt", weights_only=True)["state"]
    for name in ("accum", "ddp"):
        got = torch.load(tmp_path / name / "m.pt", weights_only=True)["state"]
        for k in ref:
            assert torch.allclose(ref[k], got[k], atol=2e-4), (name, k, (ref[k] - got[k]).abs().max())
        losses = [json.loads(line)["loss"] for line in (tmp_path / name / "m.jsonl").read_text().splitlines()]
        ref_losses = [json.loads(line)["loss"] for line in (tmp_path / "one" / "m.jsonl").read_text().splitlines()]
        assert losses == pytest.approx(ref_losses, rel=1e-4)
    # weights moved: the comparison is not between two untouched models
    init = torch.load(tmp_path / "one" / "ck.pt", weights_only=True)["model"]
    assert any(not torch.allclose(init[k], ref[k]) for k in ref if ref[k].is_floating_point())


def test_ema_warmup_keeps_little_of_the_starting_weights_after_a_short_fine_tune(runs_dir):
    """Without warmup the EMA of a 20-step run keeps 0.99^20 = 82% of its starting point; with warmup the
    decay is min(0.99, (1 + k) / (10 + k)) and the EMA ends close to the trained weights."""
    from core.training.loop import ema_decay_at

    assert ema_decay_at(0.99, 1, True) == 2 / 11 and ema_decay_at(0.99, 5000, True) == 0.99
    assert ema_decay_at(0.99, 1, False) == 0.99
    cfg = micro_cfg()
    data, diff = load_dataset(cfg), create_diffusion(cfg)
    dist = {}
    for warm in (False, True):
        run = create_run(cfg, f"warm{int(warm)}", runs_dir)
        spec = spec_for(run, cfg, 20)
        spec.ema_decay, spec.ema_warmup, spec.lr = 0.99, warm, 3e-3
        start = build_unet(cfg["model"], seed=0)
        init = {k: v.clone() for k, v in start.state_dict().items()}
        train(spec, start, diff, data, progress=False)
        st = torch.load(run.ckpt("base"), weights_only=True)
        dist[warm] = sum(
            ((st["ema"][k] - st["model"][k]) ** 2).sum().item() for k in init if init[k].is_floating_point()
        )
    assert dist[True] < dist[False] / 4


def test_finetune_measures_held_out_loss_every_n_steps_keeps_the_best_and_resumes_the_curve(runs_dir):
    """finetune.eval_every: the group's held-out loss at step 0 (just pruned) and every N steps, continued without
    repeats by a longer fine-tune; the best weights kept, and used by the progressive model with keep best."""
    rd = ["--runs-dir", runs_dir]
    run_cli(
        "train",
        "--preset",
        "tiny",
        "--name",
        "ft",
        "--train-steps",
        "4",
        *MICRO,
        "-S",
        "schedule.groups=2",
        "-S",
        "finetune.eval_every=2",
        "-S",
        "finetune.keep=best",
        "-S",
        "finetune.batch_size=8",
        "-S",
        "eval.loss_images=16",
        *rd,
        check=0,
    )
    run_cli("finetune", "ft", "--finetune-steps", "4", *rd, check=0)
    run_cli("finetune", "ft", "--finetune-steps", "6", *rd, check=0)
    run = runs_dir / "ft"
    curves = sorted((run / "metrics" / "heldout").glob("group*.jsonl"))
    assert curves
    for path in curves:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 2, 4, 6]
        best = min(rows, key=lambda r: r["value"])
        kept = torch.load(run / "models" / "best" / path.name.replace(".jsonl", ".pt"), weights_only=True)
        assert kept["step"] == best["step"] and kept["best_value"] == best["value"]
    prog = torch.load(run / "models" / "progressive.pt", weights_only=True)
    g = int(curves[0].stem[len("group") :])
    kept = torch.load(run / "models" / "best" / curves[0].name.replace(".jsonl", ".pt"), weights_only=True)
    assert all(torch.equal(prog["groups"][g]["state"][k], kept["state"][k]) for k in kept["state"])
    p = run_cli("train", "--preset", "tiny", "--name", "bad", "-S", "finetune.keep=best", *rd)
    assert p.returncode == 2 and "eval_every" in p.stderr


@pytest.mark.skipif(not bf16_native("cpu"), reason="this CPU has no AMX: training stays fp32 (tested below)")
def test_on_a_cpu_with_amx_training_runs_its_convolutions_in_bf16_and_keeps_fp32_weights(runs_dir, capfd):
    """train.bf16 on a CPU that multiplies bf16 natively: the network computes in bf16 under autocast, while
    the weights, the EMA and the checkpoint stay fp32; the job's log names the precision."""
    cfg = micro_cfg()
    run = create_run(cfg, "amx", runs_dir)
    model = build_unet(cfg["model"], seed=0)
    seen = []
    model.out_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    train(spec_for(run, cfg, 2), model, create_diffusion(cfg), load_dataset(cfg), progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    assert "[base] bf16 autocast on cpu" in capfd.readouterr().err
    ck = torch.load(run.ckpt("base"), weights_only=True)
    assert {v.dtype for v in ck["model"].values() if v.is_floating_point()} == {torch.float32}
    assert {v.dtype for v in load_unet(run.model("base")).state_dict().values()} == {torch.float32}
    assert artifact_fields(run.model("base"))["precisions"] == ["bf16 autocast"]  # recorded with the model


def test_with_bf16_off_training_computes_in_fp32(runs_dir, capfd):
    """train.bf16 = false (or a CPU without AMX): the network's output is fp32 and the log says fp32."""
    cfg = micro_cfg()
    run = create_run(cfg, "fp32", runs_dir)
    model = build_unet(cfg["model"], seed=0)
    seen = []
    model.out_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    spec = spec_for(run, cfg, 2)
    spec.bf16 = False
    train(spec, model, create_diffusion(cfg), load_dataset(cfg), progress=False)
    assert seen and set(seen) == {torch.float32}
    assert "[base] fp32 on cpu" in capfd.readouterr().err
    assert artifact_fields(run.model("base"))["precisions"] == ["fp32"]
    assert torch.load(run.ckpt("base"), weights_only=True)["precisions"] == ["fp32"]
