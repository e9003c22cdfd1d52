import json
import re

import pytest

from tests.conftest import MICRO, assert_clean_error, run_cli

COMMANDS = ["info", "train", "sample"]


def test_version_and_help_on_every_command():
    p = run_cli("--version", check=0)
    assert re.search(r"stepadapt, version \d+\.\d+\.\d+", p.stdout)
    top = run_cli("--help", check=0).stdout
    for cmd in COMMANDS:
        assert cmd in top
        h = run_cli(cmd, "--help", check=0)
        assert "Usage: stepadapt " + cmd in h.stdout


def test_unknown_preset():
    p = run_cli("info", "--preset", "cifar100")
    assert_clean_error(p)
    assert "unknown preset 'cifar100'" in p.stderr


@pytest.mark.parametrize(
    "override,msg",
    [
        ("train.steps=abc", "expects int"),
        ("train.stepz=3", "unknown config key 'train.stepz'"),
        ("nonsense", "expected key=value"),
        ("model.dropout=1.5", "model.dropout"),
    ],
)
def test_bad_overrides(override, msg, runs_dir):
    p = run_cli("train", "--preset", "tiny", "--runs-dir", runs_dir, "-S", override)
    assert_clean_error(p)
    assert msg in p.stderr
    assert list(runs_dir.iterdir()) == []  # nothing half-created


def test_missing_data_path_creates_nothing(runs_dir, tmp_path):
    p = run_cli("train", "--preset", "tiny", "--runs-dir", runs_dir, "--data", tmp_path / "missing")
    assert_clean_error(p)
    assert "dataset not found" in p.stderr
    p = run_cli("train", "--preset", "cifar10", "--runs-dir", runs_dir, "--data", f"cifar10:{tmp_path}")
    assert_clean_error(p)
    assert "--download" in p.stderr
    assert list(runs_dir.iterdir()) == []


def test_unwritable_runs_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = run_cli("train", "--preset", "tiny", "--runs-dir", blocker / "runs", "--train-steps", "1")
    assert_clean_error(p)
    assert "cannot create run folder" in p.stderr


def test_malformed_config_files(tmp_path, runs_dir):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    p = run_cli("train", bad_yaml, "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert "malformed config file" in p.stderr
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[train\nsteps = 3\n")
    assert_clean_error(run_cli("train", bad_toml, "--runs-dir", runs_dir))
    p = run_cli("train", tmp_path / "absent.yaml", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert "config file not found" in p.stderr


def test_config_file_overrides_and_run_record(tmp_path, runs_dir):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('preset = "tiny"\nseed = 7\n[train]\nsteps = 2\nlog_every = 1\n')
    p = run_cli("train", cfg, "--name", "r1", "--runs-dir", runs_dir, *MICRO, "-S", "train.lr=0.0003", check=0)
    run = runs_dir / "r1"
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["seed"] == 7 and resolved["train"]["steps"] == 2 and resolved["train"]["lr"] == 0.0003
    assert resolved["model"]["model_channels"] == 16
    meta = json.loads((run / "meta.json").read_text())
    assert len(meta["config_hash"]) == 16 and meta["seed"] == 7
    assert (run / "models" / "base.pt").exists() and "base model" in p.stdout
    # the same name again is refused, never overwritten
    again = run_cli("train", cfg, "--name", "r1", "--runs-dir", runs_dir, *MICRO)
    assert_clean_error(again)
    assert "already exists" in again.stderr
    # sampling writes a grid
    run_cli("sample", "r1", "--runs-dir", runs_dir, "--samples", "4", "--sample-steps", "3", check=0)
    assert (run / "samples" / "base_s3_seed0.png").exists()
    bad = run_cli("sample", "r1", "--runs-dir", runs_dir, "--sample-steps", "0")
    assert_clean_error(bad)
    assert "--sample-steps must be in [1, " in bad.stderr
    assert_clean_error(run_cli("sample", "nope", "--runs-dir", runs_dir))


def test_env_home_sets_the_runs_dir(tmp_path):
    home = tmp_path / "home"
    run_cli(
        "train",
        "--preset",
        "tiny",
        "--name",
        "h",
        "--train-steps",
        "1",
        *MICRO,
        env={"STEPADAPT_HOME": str(home)},
        check=0,
    )
    assert (home / "h" / "models" / "base.pt").exists()


# (command, the one visible spelling, the spellings it replaced): an option means one thing everywhere
RENAMED = [
    (["sample"], "--sampler", ["--method"]),  # --method is the pruning method everywhere else
    (["sample"], "--samples", ["--n"]),
    (["eval"], "--samples", ["--n"]),  # -n is "the last N" (llm-log)
    (["schedule"], "--n-groups", ["--groups", "--run", "--config"]),  # --groups selects groups elsewhere
    (["train"], "--name", ["--run"]),
    (["train"], "--train-steps", ["--steps"]),
    (["finetune"], "--finetune-steps", ["--steps"]),
    (["sample"], "--sample-steps", ["--steps"]),
    (["eval"], "--against", ["--baseline"]),
    (["report"], "--with-run", ["--baseline"]),
    (["llm-log"], "--last", []),
]


@pytest.mark.parametrize("cmd,new,old", RENAMED, ids=[f"{c[0]}{n}" for c, n, _ in RENAMED])
def test_renamed_options_have_one_spelling(cmd, new, old):
    """The visible spelling is in --help, and the old one is neither shown nor accepted."""
    shown = run_cli(*cmd, "--help", check=0).stdout
    assert re.search(rf"(^|[\s,]){re.escape(new)}\b", shown, re.M), shown
    for spelling in old:
        assert not re.search(rf"(^|[\s,]){re.escape(spelling)}[\s=,]", shown, re.M), (spelling, shown)
        p = run_cli(*cmd, "x", spelling, "1")
        assert p.returncode == 2 and f"No such option '{spelling}'" in p.stderr, p.stderr


def test_slot_options_are_declared_once():
    """run, resume and study run|resume take the same --parallel/--gpus/--grace: same names, type, default, help."""
    from stepadapt_cli.main import cli

    study = cli.commands["study"].commands
    commands = [cli.commands["run"], cli.commands["resume"], study["run"], study["resume"]]
    for name in ("parallel", "gpus", "grace"):
        seen = {(tuple(p.opts), str(p.type), p.default, p.help) for c in commands for p in c.params if p.name == name}
        assert len(seen) == 1, (name, seen)


# each stage command checks its run and settings before it loads torch and the training code (1.5 s of import):
# bad input is one line at once, and a run that is found still loads what it needs
_PROBE = """
import runpy, sys
sys.argv = ["stepadapt", *sys.argv[1:]]
try:
    runpy.run_module("stepadapt_cli.main", run_name="__main__")
finally:
    print("torch loaded" if "torch" in sys.modules else "torch not loaded", file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--preset", "tiny", "-S", "nope=1"],
        ["train", "--preset", "tiny", "-S", "train.steps=-1"],
        ["run", "--preset", "nope"],
        ["run", "--preset", "tiny", "--data", "folder:/no/such/folder"],  # a missing dataset: found without torch
        ["run", "--preset", "tiny", "--data", "cifar10:/no/such/root"],
        ["eval", "nope"],
        ["sample", "nope"],
        ["finetune", "nope"],
        ["prune", "nope"],
        ["control", "nope"],
        ["macs", "nope"],
    ],
)
def test_bad_input_to_a_stage_command_is_refused_before_torch_loads(args, runs_dir):
    import subprocess
    import sys

    from tests.conftest import REPO

    p = subprocess.run(
        [sys.executable, "-c", _PROBE, *args, "--runs-dir", str(runs_dir)], cwd=REPO, capture_output=True, text=True
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and lines[-1] == "torch not loaded", p.stderr
    assert [d for d in runs_dir.iterdir() if d.is_dir()] == []  # no run folder left behind either


def test_a_bad_step_pause_is_one_line_before_any_step(runs_dir, monkeypatch):
    """STEPADAPT_STEP_PAUSE (the stop-and-resume tests' pacing) takes seconds from 0 to 60; anything else is one
    line, in the command and in the loop that reads it."""
    p = run_cli(
        "train",
        "--preset",
        "tiny",
        "--name",
        "z",
        *MICRO,
        "--train-steps",
        "2",
        "--runs-dir",
        runs_dir,
        env={"STEPADAPT_STEP_PAUSE": "abc"},
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr + p.stdout  # after the run's one line of what it does
    assert [line for line in p.stderr.splitlines() if line.startswith("error:")] == [
        "error: STEPADAPT_STEP_PAUSE='abc': give seconds from 0 to 60"
    ]
    assert not (runs_dir / "z" / "checkpoints" / "base.pt").exists()
    from core.errors import UserError
    from core.training.loop import _pause_s

    for raw, want in (("", 0.0), ("0.25", 0.25), ("-1", None), ("nan", None), ("60", None)):
        monkeypatch.setenv("STEPADAPT_STEP_PAUSE", raw)
        if want is None:
            with pytest.raises(UserError, match="from 0 to 60"):
                _pause_s()
        else:
            assert _pause_s() == want
