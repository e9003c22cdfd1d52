"""The base that ships with the package: read without pickle, checked against its provenance, and a run on it is a
fork whose parent is the shipped base."""

import json
import shutil

import pytest
import torch

from core.manager import shipped
from tests.conftest import assert_clean_error, run_cli

# stage 2 on the shipped base, as small as it goes: two groups, a few steps, magnitude pruning
QUICK = [
    "-S",
    "schedule.groups=2",
    "-S",
    "finetune.steps=2",
    "-S",
    "finetune.batch_size=8",
    "-S",
    "prune.images=16",
    "-S",
    "prune.eval_images=8",
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
]


def test_the_shipped_base_is_tensors_only_matches_its_record_and_reproduces_its_loss():
    prov = shipped.provenance("tiny")
    path = shipped.SHIPPED / "tiny" / shipped.WEIGHTS
    raw = path.read_bytes()
    # safetensors: the JSON header's length, the header, then the raw tensor bytes it indexes and nothing else (no
    # pickle, no room for a payload): the offsets tile the rest of the file exactly
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    arch, state, prov2 = shipped.load("tiny")  # checks the sha256 and every tensor's shape against the arch
    assert prov2 == prov and arch == prov["arch"]
    assert prov["bytes"] == len(raw) and prov["steps"] > 0 and prov["params"] == sum(v.numel() for v in state.values())
    for key in ("command", "config_hash", "commit", "seed", "sha256", "eval", "held_out_loss"):
        assert prov[key] is not None, key
    lo, hi = prov["eval"]["fid_ci"]
    assert lo <= prov["eval"]["fid"] <= hi and prov["eval"]["n"] == 1024
    from core.method.prune import build_pruned

    model = build_pruned(arch, None, state).eval()
    cfg = shipped.base_config(prov)
    # the stage 1 `make base` trains (stepadapt train --preset tiny --train-steps N) is the one that made it
    from core import config as C

    assert shipped.stage1_hash(C.resolve("tiny", None, [f"train.steps={prov['steps']}"])) == prov["stage1_hash"]
    loss = shipped.fixed_batch_loss(model, cfg, prov["check"]["images"], prov["check"]["seed"])
    assert abs(loss - prov["check"]["loss"]) <= 0.01 * prov["check"]["loss"], (loss, prov["check"])


def test_a_changed_shipped_file_is_refused_in_one_line(tmp_path, monkeypatch):
    shutil.copytree(shipped.SHIPPED / "tiny", tmp_path / "tiny")
    weights = tmp_path / "tiny" / shipped.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path)  # a copy of the package's folder, one bit changed
    from core.errors import UserError

    with pytest.raises(UserError, match="does not match its recorded sha256"):
        shipped.load("tiny")
    with pytest.raises(UserError, match="no shipped base 'nope'.*shipped: tiny"):
        shipped.load("nope")


def test_a_run_on_the_shipped_base_names_it_as_parent_and_runs_stage_two(runs_dir):
    rd = ["--runs-dir", runs_dir]
    prov = shipped.provenance("tiny")
    p = run_cli("run", "--base", "shipped", "--name", "d", "--method", "magnitude", *QUICK, *rd, check=0)
    assert f"stage 1 is the shipped tiny base ({prov['steps']:,} steps" in p.stderr
    show = json.loads(run_cli("show", "d", "--json", *rd, check=0).stdout)
    assert show["run"]["parent"] == "shipped:tiny"
    assert show["run"]["base"] == f"shipped base tiny ({prov['steps']:,} steps)"
    assert show["meta"]["base"]["origin"] == "shipped" and show["meta"]["base"]["file_sha256"] == prov["sha256"]
    assert "shipped base tiny" in run_cli("show", "d", *rd, check=0).stdout
    assert "the shipped base tiny" in (runs_dir / "d" / "report" / "index.html").read_text()
    listing = json.loads(run_cli("runs", "--json", *rd, check=0).stdout)
    assert listing[0]["parent"] == "shipped:tiny" and listing[0]["status"] == "succeeded"
    art = torch.load(runs_dir / "d" / "models" / "base.pt", weights_only=True)
    _, state, _ = shipped.load("tiny")
    assert all(torch.equal(art["state"][k], v) for k, v in state.items()) and art["step"] == prov["steps"]
    ev = json.loads((runs_dir / "d" / "eval.json").read_text())
    assert ev["models"]["control"]["train_steps"] == ev["models"]["progressive"]["train_steps"]
    # what stage 1 fixes cannot change; an unknown base and a config file are refused before anything is written
    assert_clean_error(run_cli("run", "--base", "shipped", "-S", "model.model_channels=8", "--name", "x", *rd))
    assert_clean_error(run_cli("run", "--base", "shipped:nope", "--name", "y", *rd))
    assert not (runs_dir / "x").exists() and not (runs_dir / "y").exists()


def test_a_study_on_the_shipped_base_imports_it_once_and_forks_every_arm_from_it(tmp_path, runs_dir):
    """``study run FILE --base shipped``: the study's base run is the shipped base (its parent shipped:tiny), each
    arm a fork of it; an arm that wants a milestone of its own is refused in one line, before anything is written."""
    rd = ["--runs-dir", runs_dir]
    pairs = [QUICK[i + 1].split("=", 1) for i in range(0, len(QUICK), 2)]
    common = ", ".join(f"{k}: {v}" for k, v in pairs)
    study = tmp_path / "mini.yaml"
    study.write_text(
        'title: "two arms on the shipped base"\n'
        f"common: {{{common}}}\n"
        "arms:\n  - {name: mag, set: {prune.method: magnitude}}\n  - {name: none, set: {prune.method: none}}\n"
        "rows:\n  - {label: base, arm: mag, model: base}\n  - {label: pruned, arm: mag, model: progressive}\n"
    )
    run_cli("study", "run", str(study), "--base", "shipped", "--name", "s", *rd, check=0)
    show = json.loads(run_cli("show", "s-base", "--json", *rd, check=0).stdout)
    assert show["run"]["parent"] == "shipped:tiny"
    _, state, _ = shipped.load("tiny")
    for arm in ("s-mag", "s-none"):
        assert json.loads(run_cli("show", arm, "--json", *rd, check=0).stdout)["run"]["parent"] == "s-base"
        art = torch.load(runs_dir / arm / "models" / "base.pt", weights_only=True)
        assert all(torch.equal(art["state"][k], v) for k, v in state.items())
    milestone = tmp_path / "at.yaml"
    milestone.write_text(study.read_text().replace("{name: mag,", "{name: mag, at: 1500,"))
    p = run_cli("study", "run", str(milestone), "--base", "shipped", "--name", "m", *rd)
    assert_clean_error(p)
    assert "milestone" in p.stderr and not (runs_dir / "m-base").exists()
