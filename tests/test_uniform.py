"""The control at equal inference cost (``control.uniform``): one copy of the base pruned to the progressive model's
average MACs for all timesteps, fine-tuned on all timesteps for the fine-tunes' total steps, evaluated and
compared wherever the control is."""

import json
import math

import torch

from tests.conftest import MICRO, run_cli

SMALL = [
    *MICRO,
    "-S",
    "train.steps=6",
    "-S",
    "finetune.steps=3",
    "-S",
    "schedule.groups=2",
    "-S",
    "prune.rounds=1",
    "-S",
    "eval.fid_n=32",
    "-S",
    "eval.loss_images=16",
    "-S",
    "eval.steps=5",
    "-S",
    "sample.n=4",
    "-S",
    "sample.steps=5",
]


def test_the_uniform_control_costs_what_the_progressive_model_costs_and_trains_as_long_as_its_fine_tunes(runs_dir):
    p = run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "u",
        *SMALL,
        "-S",
        "control.uniform=true",
        "-S",
        "prune.method=magnitude",
        "--runs-dir",
        runs_dir,
        check=0,
    )
    ev = json.loads((runs_dir / "u" / "eval.json").read_text())
    m = ev["models"]
    assert abs(m["uniform"]["macs"] / m["progressive"]["macs"] - 1) <= 0.03  # within prune.tolerance
    assert m["uniform"]["macs"] < 0.95 * m["base"]["macs"]  # it was pruned: the progressive model is cheaper
    rec = json.loads((runs_dir / "u" / "prune" / "uniform.json").read_text())
    assert rec["method"] == "magnitude" and rec["budget_macs"] == m["progressive"]["macs"]
    uniform = torch.load(runs_dir / "u" / "models" / "uniform.pt", weights_only=True)
    control = torch.load(runs_dir / "u" / "models" / "control.pt", weights_only=True)
    groups = [torch.load(f, weights_only=True)["step"] for f in sorted((runs_dir / "u" / "models").glob("group*.pt"))]
    assert uniform["step"] == uniform["added_steps"] == control["added_steps"] == sum(groups) == 6
    assert uniform["added_images"] == control["added_images"]
    assert m["uniform"]["train_steps"] == m["control"]["train_steps"] == m["progressive"]["train_steps"] == 12
    pair = next(c for c in ev["comparisons"] if (c["model"], c["against"]) == ("progressive", "uniform"))
    assert pair["verdict"] in ("better", "worse", "no significant difference")
    assert "progressive vs uniform" in p.stdout and "same average MACs" in p.stdout
    shown = run_cli("show", "u", "--runs-dir", runs_dir, check=0).stdout
    assert "uniform" in shown
    assert "progressive vs uniform" in (runs_dir / "u" / "report" / "index.html").read_text()


def test_a_run_without_pruning_has_no_uniform_control(runs_dir):
    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "n",
        *SMALL,
        "-S",
        "control.uniform=true",
        "-S",
        "prune.method=none",
        "-S",
        "eval.fid=false",
        "--runs-dir",
        runs_dir,
        check=0,
    )
    assert not (runs_dir / "n" / "models" / "uniform.pt").exists()
    stages = json.loads(run_cli("show", "n", "--json", "--runs-dir", runs_dir, check=0).stdout)["stages"]
    assert stages["uniform"] == "skipped" and stages["control"] == "done"


def test_dense_small_is_the_width_nearest_the_progressive_models_cost_trained_as_long_from_fresh_weights(runs_dir):
    """control.dense: the narrower dense UNet whose MACs are nearest the progressive model's average (at the tiny
    preset's 0.70x, 27 channels: within 3%), trained from fresh weights for stage 1's and every fine-tune's steps."""
    from core import config as C
    from core.manager.stages.dense import width_for
    from core.model.macs import count
    from core.model.unet import build_unet

    cfg = C.resolve("tiny", None, [])
    full = count(build_unet(C.model_arch(cfg), seed=0), 32, 1)["macs"]
    arch, macs = width_for(cfg, 0.70 * full)
    assert arch["model_channels"] == 27 and arch["norm_groups"] == 3 and abs(macs / (0.70 * full) - 1) < 0.03
    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "d",
        *SMALL,
        "-S",
        "control.dense=true",
        "-S",
        "prune.method=magnitude",
        "--runs-dir",
        runs_dir,
        check=0,
    )
    m = json.loads((runs_dir / "d" / "eval.json").read_text())["models"]
    dense = torch.load(runs_dir / "d" / "models" / "dense-small.pt", weights_only=True)
    assert dense["step"] == dense["total_steps"] == 6 + 6 and m["dense-small"]["train_steps"] == 12
    assert dense["arch"]["model_channels"] < 16 and "plan" not in dense
    widths = [w for w in range(2, 17) if (2 * w) % 2 == 0]  # the micro model: 2 heads at 2x width
    from core.manager.stages.dense import narrower

    costs = {
        w: count(
            build_unet(narrower(C.model_arch(json.loads((runs_dir / "d" / "config.json").read_text())), w), seed=0),
            32,
            1,
        )["macs"]
        for w in widths
    }
    target = dense["target_macs"]
    nearest = min(widths, key=lambda w: abs(math.log(costs[w] / target)))
    assert dense["arch"]["model_channels"] == nearest and m["dense-small"]["macs"] == costs[nearest]
