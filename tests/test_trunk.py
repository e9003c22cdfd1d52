"""The shared trunk (``finetune.trunk shared``): one encoder, fine-tuned on all timesteps and frozen, shared by every
group model; per group only the decoder is pruned to the budget and fine-tuned, and stage 2 keeps its total steps."""

import json
import re

import pytest
import torch

from core import config as C
from core.method.trunk import in_decoder, in_encoder
from tests.conftest import MICRO, assert_clean_error, run_cli

pytestmark = pytest.mark.xdist_group("trunk")  # its module fixture is built once, on one worker

SMALL = [
    *MICRO,
    "-S",
    "train.steps=6",
    "-S",
    "finetune.steps=3",
    "-S",
    "schedule.groups=2",
    "-S",
    "prune.method=magnitude",
    "-S",
    "eval.fid=false",
    "-S",
    "eval.loss_images=16",
    "-S",
    "eval.steps=5",
    "-S",
    "sample.n=4",
    "-S",
    "sample.steps=5",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    rd = tmp_path_factory.mktemp("trunk")
    run_cli("run", "--preset", "tiny", "--name", "sh", *SMALL, "-S", "finetune.trunk=shared", "--runs-dir", rd, check=0)
    return rd


def _art(rd, name):
    return torch.load(rd / "sh" / "models" / f"{name}.pt", weights_only=True)


def test_every_group_model_carries_the_trunks_encoder_bit_for_bit_and_only_its_decoder_is_pruned(shared):
    trunk = _art(shared, "trunk")["state"]
    encoder = {k: v for k, v in trunk.items() if in_encoder(k)}
    assert {k.split(".")[0] for k in encoder} == {"time_embed", "input_blocks", "middle_block"}
    base = _art(shared, "base")["state"]  # the trunk was fine-tuned (on all timesteps) before it was frozen
    assert any(not torch.equal(base[k], v) for k, v in encoder.items())
    groups = {g: _art(shared, f"group{g:02d}")["state"] for g in (0, 1)}
    for state in groups.values():
        assert all(torch.equal(state[k], v) for k, v in encoder.items())
        assert any(
            not torch.equal(state[k], trunk[k]) for k in trunk if in_decoder(k) and state[k].shape == trunk[k].shape
        )
    # group 0 (budget 0.75 F) is pruned, in the decoder alone; group 1 (budget F) keeps every channel
    narrower = [k for k in trunk if groups[0][k].shape != trunk[k].shape]
    assert narrower and all(in_decoder(k) for k in narrower)
    assert any(k.startswith("output_blocks") and k.endswith("in_conv.weight") for k in narrower)
    assert all(groups[1][k].shape == trunk[k].shape for k in trunk)
    # the progressive model holds the same weights and says its encoder is shared
    prog = torch.load(shared / "sh" / "models" / "progressive.pt", weights_only=True)
    assert prog["trunk"]["shared"] is True and prog["trunk"]["encoder"] == [
        "time_embed",
        "input_blocks",
        "middle_block",
    ]
    assert all(torch.equal(prog["groups"][0]["state"][k], v) for k, v in encoder.items())


def test_a_pruned_decoder_lands_at_its_budget_and_a_group_costs_encoder_plus_decoder(shared):
    from core.method.artifacts import load_unet
    from core.model.macs import count

    rec = json.loads((shared / "sh" / "prune" / "group00.json").read_text())
    rep = rec["report"]
    assert rec["trunk"] == "shared" and rec["trunk_step"] == _art(shared, "trunk")["step"]
    assert rec["budget_macs"] * (1 - 0.03) <= rep["macs"] <= rec["budget_macs"] and rep["within_tolerance"]
    assert rec["reachable_macs"] < rep["macs"]
    assert all(name.startswith(("output_blocks", "heads:output_blocks")) for name in rec["plan"]["remove"])
    assert count(load_unet(shared / "sh" / "models" / "group00.pt"), 32, 1)["macs"] == rep["macs"]


def test_the_trunk_and_the_decoders_train_the_separate_fine_tunes_total_and_so_does_the_control(shared):
    """2 groups x 3 steps: the trunk 2 x round(0.5 x 3) = 4 steps, each decoder 1; 6 in all, as the control."""
    trunk, groups = _art(shared, "trunk"), [_art(shared, f"group{g:02d}") for g in (0, 1)]
    assert trunk["step"] == 4 and [g["step"] for g in groups] == [1, 1]
    assert all(g["trunk"]["step"] == 4 for g in groups)
    control = _art(shared, "control")
    assert control["added_steps"] == trunk["step"] + sum(g["step"] for g in groups) == 2 * 3
    ev = json.loads((shared / "sh" / "eval.json").read_text())["models"]
    assert ev["progressive"]["train_steps"] == ev["control"]["train_steps"] == 6 + 6
    # the trunk is recorded as shared, its parameters counted once
    t = ev["progressive"]["trunk"]
    decoders = sum(v.numel() for g in groups for k, v in g["state"].items() if not in_encoder(k))
    assert t["shared"] is True and t["encoder_params"] == sum(
        v.numel() for k, v in trunk["state"].items() if in_encoder(k)
    )
    assert ev["progressive"]["params_total"] == t["params_total"] == t["encoder_params"] + decoders
    shown = json.loads(run_cli("show", "sh", "--json", "--runs-dir", shared, check=0).stdout)
    assert shown["stages"]["trunk"] == "done" and shown["eval"]["models"]["progressive"]["trunk"]["shared"] is True


def test_a_budget_the_decoder_alone_cannot_reach_is_one_line_naming_the_fewest_macs(shared):
    rd = ["--runs-dir", shared]
    run_cli("fork", "sh", "low", "-S", "schedule.groups=4", "-S", "schedule.k=0.1", *rd, check=0)
    p = run_cli("prune", "low", *rd)
    assert_clean_error(p)
    assert "decoder alone, which reaches 0.0289 GMACs (0.447 F) at the least" in p.stderr
    assert "raise schedule.k or use finetune.trunk separate" in p.stderr


def test_the_default_is_separate_also_for_a_run_written_before_the_key(runs_dir):
    from core.manager import stages
    from core.runs import Run, create_run, register_run

    cfg = C.resolve("tiny", None, MICRO[1::2])
    assert cfg["finetune"]["trunk"] == "separate" and not C.shared_trunk(cfg)
    run = create_run(cfg, "old", runs_dir)
    old = json.loads(run.config_file.read_text())
    del old["finetune"]["trunk"], old["finetune"]["trunk_share"]
    run.config_file.write_text(json.dumps(old))
    run = Run(run.path)
    register_run(run)
    assert run.config["finetune"]["trunk"] == "separate" and stages.pending(run, "trunk") == []
    shown = json.loads(run_cli("show", "old", "--json", "--runs-dir", runs_dir, check=0).stdout)
    assert "trunk" not in shown["stages"] and "prune" in shown["stages"]


def test_bad_trunk_settings_are_one_line(runs_dir):
    from core.errors import UserError

    p = run_cli("run", "--preset", "tiny", "--name", "bad", "-S", "finetune.trunk=both", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert "finetune.trunk must be one of separate, shared" in p.stderr and not (runs_dir / "bad").exists()
    for settings, says in [
        (["finetune.trunk_share=1.5"], "finetune.trunk_share must be in (0, 1)"),
        (["finetune.steps=1"], "round(0.5 x finetune.steps) = 0 of each group's 1 steps to the trunk"),
        (
            ["prune.method=scratch", "prune.scratch_from=other"],
            "not with finetune.single_stage or prune.method scratch",
        ),
        (["finetune.single_stage=true", "prune.method=none"], "not with finetune.single_stage or prune.method scratch"),
    ]:
        with pytest.raises(UserError, match=re.escape(says)):
            C.resolve("tiny", None, ["finetune.trunk=shared", *settings])
