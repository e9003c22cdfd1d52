import json

import torch

from core.method.artifacts import load_progressive
from tests.conftest import MICRO, assert_clean_error, run_cli


def test_tiny_two_stage_run_end_to_end(runs_dir):
    rd = ["--runs-dir", runs_dir]
    run_cli(
        "train",
        "--preset",
        "tiny",
        "--name",
        "ts",
        "--train-steps",
        "4",
        *MICRO,
        "-S",
        "schedule.groups=4",
        *rd,
        check=0,
    )
    # stage 2 before... the wrong way round is an error, not a crash
    assert_clean_error(run_cli("sample", "ts", "--model", "progressive", *rd))
    # one group first: no progressive model yet
    p = run_cli("finetune", "ts", "--finetune-steps", "2", "--groups", "1", *rd, check=0)
    run = runs_dir / "ts"
    sched = json.loads((run / "schedule.json").read_text())
    nonempty = [g["index"] for g in sched["groups"] if g["size"]]
    assert (run / "models" / "group01.pt").exists() and not (run / "models" / "progressive.pt").exists()
    first = (run / "models" / "group01.pt").stat().st_mtime_ns
    # then all: group 1 is skipped (done), the others trained, the progressive model assembled
    p = run_cli("finetune", "ts", "--finetune-steps", "2", *rd, check=0)
    assert "group 1: done already" in p.stderr
    assert (run / "models" / "group01.pt").stat().st_mtime_ns == first
    for g in nonempty:
        ck = torch.load(run / "checkpoints" / f"group{g:02d}.pt", weights_only=True)
        assert ck["step"] == 2 and ck["spec"]["timesteps"] == sched["groups"][g]["timesteps"]
    prog = load_progressive(run / "models" / "progressive.pt")
    assert sorted(int(k) for k in prog.models) == nonempty
    assert prog.group_of.tolist() == [
        next(g["index"] for g in sched["groups"] if t in g["timesteps"]) for t in range(100)
    ]
    # a group model starts from the base EMA and moves away from it
    base = torch.load(run / "models" / "base.pt", weights_only=True)["state"]
    g1 = torch.load(run / "models" / "group01.pt", weights_only=True)["state"]
    assert any(not torch.equal(base[k], g1[k]) for k in base)
    # sampling with the progressive model, and the cost table
    run_cli("sample", "ts", "--model", "progressive", "--samples", "3", "--sample-steps", "5", *rd, check=0)
    assert (run / "samples" / "progressive_s5_seed0.png").exists()
    m = json.loads(run_cli("macs", "ts", "--json", *rd, check=0).stdout)
    assert m["progressive"]["avg_all"]["macs"] == m["base"]["macs"]  # same architecture before pruning
    assert m["progressive"]["params_total"] == len(nonempty) * m["base"]["params"]
    assert_clean_error(run_cli("finetune", "ts", "--groups", "x", *rd))
    assert_clean_error(run_cli("finetune", "ts", "--groups", "7", *rd))
