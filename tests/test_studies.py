"""Studies: the paper's tables as sets of runs forking one base, resumable as a whole, reported beside the paper."""

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from core import config as C
from core.errors import UserError
from core.manager.studies import arm_overrides, create_study, definitions, load_definition, results
from tests.conftest import MICRO, REPO, assert_clean_error, run_cli

EXPECTED_ARMS = {
    "table1": {"method": {"prune.method": "proxy"}},
    "table2": {"two-stage": {"prune.method": "none"}},
    "table3": {k: {"schedule.kind": k} for k in ("snr", "constant", "increasing", "decreasing")},
    "table4": {
        **{m: {"prune.method": m, "schedule.groups": 1} for m in ("random", "magnitude", "taylor", "diff", "proxy")},
        "scratch": {"prune.method": "scratch", "prune.scratch_from": "table4-tiny-proxy"},
    },
    "table5": {f"g{n}": {"schedule.groups": n, "prune.method": "none"} for n in (4, 8, 10, 15, 20)},
    "table6": {m: {"prune.method": m} for m in ("random", "magnitude", "proxy")},
    "fig8": {
        "two-stage": {"prune.method": "none"},
        "single-stage": {"finetune.single_stage": True, "finetune.steps": 250},
    },
    "fig7": {"proxy": {"prune.proposals": 3, "prune.rounds": 5}},
    "fig6": {
        "last": {"finetune.eval_every": 50, "finetune.keep": "last", "finetune.fid_n": 256},
        "best": {"finetune.eval_every": 50, "finetune.keep": "best"},
    },
    "levers": {
        "g2": {"schedule.groups": 2, "finetune.steps": 500},
        "g3": {"schedule.groups": 3},
        "g5": {"schedule.groups": 5},
        "g10": {"schedule.groups": 10, "finetune.steps": 100},
        "reversed": {"schedule.kind": "snr-reversed", "control.uniform": True},
        "distill": {"finetune.distill": 1.0, "prune.method": "proxy"},
        "shared": {"finetune.trunk": "shared", "schedule.groups": 10, "finetune.steps": 100},
        "unpruned": {"prune.method": "none", "control.uniform": False, "schedule.groups": 10},
    },
    "convergence": {
        **{
            f"{kind}{step}": {"prune.method": method}
            for step in (1500, 3000, 6000, 12000, 24000)
            for kind, method in (("p", "proxy"), ("t", "none"))
        },
        **{
            f"{kind}40000-s{seed}": {"prune.method": method, "seed": seed}
            for seed in (0, 1, 2)
            for kind, method in (("p", "proxy"), ("t", "none"))
        },
    },
}


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", sorted(EXPECTED_ARMS))
def test_each_study_expands_to_its_arms_on_one_shared_base(name, runs_dir):
    defn = load_definition(name)
    rec = create_study(defn, None, "tiny", None, [], runs_dir)
    assert rec["id"] == f"{name}-tiny" and rec["base"] == f"{name}-tiny-base"
    assert rec["arms"] == {a: f"{name}-tiny-{a}" for a in EXPECTED_ARMS[name]}
    for arm in defn["arms"]:
        cfg = C.apply_overrides(C.resolve("tiny", None, []), arm_overrides(defn, arm, rec["id"]))
        for key, want in EXPECTED_ARMS[name][arm["name"]].items():
            assert _get(cfg, key) == want, (arm["name"], key)
        # every arm shares the base's stage-1 sections (so it can fork it)
        base = C.resolve("tiny", None, [])
        assert all(cfg[s] == base[s] for s in ("model", "diffusion", "train", "data"))
    res = results(rec, runs_dir)  # nothing run yet: the paper's column is there, ours empty
    assert len(res["rows"]) == len(defn["rows"]) and all(r["fid"] is None for r in res["rows"])
    assert any(r["paper"] for r in res["rows"]) or not defn.get("paper_columns")
    with pytest.raises(UserError, match="exists"):
        create_study(defn, None, "tiny", None, [], runs_dir)


def test_every_shipped_definition_is_listed_and_a_bad_one_is_one_line(tmp_path, runs_dir):
    assert set(definitions()) == set(EXPECTED_ARMS)
    out = json.loads(run_cli("study", "list", "--json", "--runs-dir", runs_dir, check=0).stdout)
    assert {d["name"] for d in out["definitions"]} == set(EXPECTED_ARMS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: x\narms: [{name: a}]\nrows: [{label: r, arm: b, model: progressive}]\n")
    p = run_cli("study", str(bad), "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert "arm" in p.stderr
    assert_clean_error(run_cli("study", "nosuch", "--runs-dir", runs_dir))
    assert_clean_error(run_cli("study", "show", "nosuch", "--runs-dir", runs_dir))
    p = run_cli("study", "table6", "--base", "nosuch", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert not (runs_dir / "studies").exists() or not any((runs_dir / "studies").iterdir())


STUDY = """
title: "two arms on one base"
paper_columns: ["FID"]
common: {schedule.groups: 1, schedule.kind: constant}
arms:
  - {name: a, set: {prune.method: none}}
  - {name: b, set: {prune.method: magnitude}}
rows:
  - {label: "base", arm: a, model: base, paper: [4.08]}
  - {label: "unpruned groups", arm: a, model: progressive, paper: [3.52]}
  - {label: "magnitude", arm: b, model: progressive, paper: [3.88]}
"""
FAST = [
    *MICRO,
    "-S",
    "train.steps=10",
    "-S",
    "train.log_every=5",
    "-S",
    "finetune.steps=4",
    "-S",
    "finetune.batch_size=8",
    "-S",
    "control.enabled=false",
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
    "sample.steps=3",
    "-S",
    "eval.loss_images=16",
    "-S",
    "eval.fid=false",
    "-S",
    "eval.steps=3",
]


def _status(runs_dir, name):
    con = sqlite3.connect(runs_dir / "stepadapt.db")
    try:
        row = con.execute("select status from runs where name = ?", [name]).fetchone()
        return row[0] if row else None
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


def _jobs(runs_dir, name):
    con = sqlite3.connect(runs_dir / "stepadapt.db")
    try:
        return con.execute("select id, stage from jobs where run = ?", [name]).fetchall()
    finally:
        con.close()


def test_a_study_stopped_midway_resumes_without_rerunning_finished_runs(tmp_path, runs_dir):
    """The base trains once, arm a finishes, the study is stopped (Ctrl-C) while arm b runs; `study resume`
    finishes b, leaves a alone, and the table and report show both beside the paper's numbers."""
    spec = tmp_path / "two.yaml"
    spec.write_text(STUDY)
    args = [
        sys.executable,
        "-m",
        "stepadapt_cli.main",
        "study",
        str(spec),
        "--name",
        "s",
        *FAST,
        "--runs-dir",
        str(runs_dir),
    ]
    # Ctrl-C's SIGINT as a terminal delivers it: a test run started in the background (`make test &`) passes
    # SIGINT on ignored, and an ignored SIGINT stops nothing
    p = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (
        _status(runs_dir, "s-a") == "succeeded" and _status(runs_dir, "s-b") == "running"
    ):
        assert p.poll() is None, p.communicate()
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert _status(runs_dir, "s-b") == "killed" and _status(runs_dir, "s-a") == "succeeded"
    a_jobs = _jobs(runs_dir, "s-a")
    assert [s for _, s in _jobs(runs_dir, "s-base")] == ["base"]  # stage 1 once, for both arms

    p = run_cli("study", "resume", "s", "--runs-dir", runs_dir)
    assert p.returncode == 0, p.stderr
    assert _jobs(runs_dir, "s-a") == a_jobs and _status(runs_dir, "s-b") == "succeeded"
    assert [s for _, s in _jobs(runs_dir, "s-base")] == ["base"]
    shown = json.loads(run_cli("study", "show", "s", "--json", "--runs-dir", runs_dir, check=0).stdout)
    assert [r["label"] for r in shown["rows"]] == ["base", "unpruned groups", "magnitude"]
    assert all(r["loss"] is not None and r["macs"] for r in shown["rows"])
    assert shown["rows"][2]["macs_ratio"] < 1.0 and shown["rows"][1]["paper"] == {"FID": 3.52}
    assert shown["runs"] == {"s-base": "partial", "s-a": "succeeded", "s-b": "succeeded"}
    page = (runs_dir / "studies" / "s" / "report" / "index.html").read_text()
    assert "paper: FID" in page and "samples.png" in page
    assert (runs_dir / "studies" / "s" / "report" / "samples.png").stat().st_size > 0
    assert_clean_error(run_cli("study", str(spec), "--name", "s", "--runs-dir", runs_dir))  # exists: resume it


def test_scratch_takes_another_runs_architecture_and_none_of_the_base_weights(runs_dir):
    """Table 4's scratch arm: the source run's pruned architecture, every weight initialised afresh; its
    progressive model counts only the fine-tune's steps (none of stage 1's)."""
    import torch

    from core.manager.stages.prune import pruned_base
    from core.runs import open_run

    rd = ["--runs-dir", runs_dir]
    small = [
        *MICRO,
        "-S",
        "schedule.groups=1",
        "-S",
        "schedule.kind=constant",
        "-S",
        "prune.images=16",
        "-S",
        "prune.eval_images=16",
        "-S",
        "prune.batches=1",
        "-S",
        "prune.batch_size=8",
    ]
    run_cli("train", "--preset", "tiny", "--name", "src", "--train-steps", "5", *small, *rd, check=0)
    run_cli("prune", "src", "--method", "magnitude", *rd, check=0)
    p = run_cli("fork", "src", "scr", "-S", "prune.method=scratch", *rd)
    assert_clean_error(p)  # scratch without a source: one line
    assert "scratch_from" in p.stderr
    run_cli("fork", "src", "scr", "-S", "prune.method=scratch", "-S", "prune.scratch_from=src", *rd, check=0)
    run_cli("prune", "scr", *rd, check=0)
    src, scr = open_run("src", runs_dir), open_run("scr", runs_dir)
    a, rec_a = pruned_base(src, 0)
    b, rec_b = pruned_base(scr, 0)
    assert rec_b["plan"] == rec_a["plan"] and rec_a["plan"]["remove"]
    assert rec_b["method"] == {"method": "scratch", "from": "src"} and rec_b["report"]["reinitialised"]
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}  # the plan's architecture
    assert not any(torch.equal(sa[k], sb[k]) for k in sa)  # and none of the base's weights
    from core.evaluation.evaluate import model_cost
    from core.method.artifacts import load_progressive
    from core.method.schedule import run_schedule

    run_cli("finetune", "scr", "--finetune-steps", "2", *rd, check=0)
    cost = model_cost(load_progressive(scr.model("progressive")), "progressive", scr.config, 3, run_schedule(scr), scr)
    assert cost["train_steps"] == 2


def test_single_stage_trains_no_base_and_every_group_from_fresh_weights(runs_dir):
    """`run --single-stage`: stage 1 and the control are skipped, each group's model starts from fresh weights,
    and the evaluation counts only the groups' steps."""
    p = run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "one",
        "--single-stage",
        *FAST,
        "-S",
        "schedule.groups=2",
        "--runs-dir",
        runs_dir,
    )
    assert p.returncode == 0, p.stderr
    run = runs_dir / "one"
    assert not (run / "models" / "base.pt").exists() and not (run / "models" / "control.pt").exists()
    stages = {s for _, s in _jobs(runs_dir, "one")}
    assert "base" not in stages and "control" not in stages and "finetune" in stages
    ev = json.loads((run / "eval.json").read_text())
    assert list(ev["models"]) == ["progressive"]
    groups = [g for g in json.loads((run / "schedule.json").read_text())["groups"] if g["size"]]
    assert ev["models"]["progressive"]["train_steps"] == 4 * len(groups)  # the groups' own steps, no base
    shown = json.loads(run_cli("show", "one", "--json", "--runs-dir", runs_dir, check=0).stdout)
    assert shown["stages"]["base"] == "skipped" and shown["stages"]["control"] == "skipped"
    p = run_cli(
        "run", "--preset", "tiny", "--name", "two", "--single-stage", "--method", "magnitude", "--runs-dir", runs_dir
    )
    assert p.returncode == 2 and "single_stage" in p.stderr and not (runs_dir / "two").exists()


def test_arms_side_by_side_on_cpu_split_the_cores_instead_of_each_taking_all(tmp_path, runs_dir):
    """With `--parallel 2` on CPU two arms run at once; each arm's jobs get half the cores (an arm's eval took all
    of them before, and two arms' oversubscribed OpenMP threads ran several times slower than one at a time)."""
    spec = tmp_path / "two.yaml"
    spec.write_text(STUDY)
    p = run_cli("study", str(spec), "--name", "p", "--parallel", "2", *FAST, "--runs-dir", runs_dir)
    assert p.returncode == 0, p.stderr
    share = max(1, (__import__("os").cpu_count() or 1) // 2)
    for arm in ("p-a", "p-b"):
        logs = sorted((runs_dir / arm / "logs").glob("*.log"))
        stages = {log.stem.split("-")[1]: log.read_text() for log in logs if "-pipeline" not in log.name}
        assert {"schedule", "finetune", "sample", "eval"} <= set(stages), [log.name for log in logs]
        for stage, text in stages.items():
            assert f"] {share} CPU threads" in text, (arm, stage, text[:300])


def test_the_fid_vs_macs_plot_draws_a_base_shared_by_arms_once_and_keeps_distinct_models_apart(runs_dir):
    """Arms forked from one base carry the same base file and measurement in every eval.json: one point,
    labelled with how many runs share it. Controls whose files differ stay one point per run."""
    import os

    from core.evaluation.report import _distinct_points, plot_fid_macs
    from core.runs import create_run

    cfg = C.resolve("tiny", None, list(MICRO[1::2]))
    runs = [create_run(cfg, name, runs_dir) for name in ("arm-a", "arm-b")]
    base = runs[0].model("base")
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_bytes(b"the shared stage 1")
    row = {"fid": 0.2, "kid": 0.002, "fid_n": 512, "macs": 2.5e8, "fid_ci": [0.1, 0.3], "kid_ci": [0.001, 0.003]}
    for i, r in enumerate(runs):
        r.model("control").parent.mkdir(parents=True, exist_ok=True)
        if i:
            os.link(base, r.model("base"))  # as `fork` shares it
        r.model("control").write_bytes(f"control of {r.name}".encode())
        r.model("progressive").write_bytes(f"progressive of {r.name}".encode())
        r.eval_file().write_text(
            json.dumps(
                {
                    "models": {
                        "base": row,
                        "control": {**row, "fid": 0.12},
                        "progressive": {**row, "fid": 0.25 + i, "macs": 1.7e8},
                    }
                }
            )
        )
    labels = [p[0] for p in _distinct_points(runs)]
    assert labels == [
        "base (shared by 2 runs)",
        "arm-a/control",
        "arm-a/progressive",
        "arm-b/control",
        "arm-b/progressive",
    ]
    assert plot_fid_macs(runs, runs_dir / "fid_macs.png") and (runs_dir / "fid_macs.png").stat().st_size > 1000


def _study_file(tmp_path, arms="  - {name: a, set: {prune.method: none}}\n", rows=None, top="", file="study"):
    """A study definition with these arms (YAML lines) and rows (default: one of arm a)."""
    path = tmp_path / f"{file}.yaml"
    path.write_text(f"title: t\n{top}arms:\n{arms}rows:\n{rows or '  - {label: r, arm: a, model: progressive}'}\n")
    return path


@pytest.mark.parametrize(
    "arms,rows,top,said",
    [
        ("  - {name: a, sett: {prune.method: magnitude}}\n", None, "", "unknown key 'sett'; did you mean 'set'?"),
        ("  - {name: a}\n", None, "titel: x\n", "unknown key 'titel'; did you mean 'title'?"),
        (
            "  - {name: a}\n",
            "  - {label: r, arm: a, modle: progressive}",
            "",
            "unknown key 'modle'; did you mean 'model'?",
        ),
        ("  - {name: a, set: 3}\n", None, "", "'set' must be a table of settings"),
        (
            "  - {name: a}\n",
            "  - {label: r, arm: a, model: progressive, paper: 4.08}",
            "paper_columns: [FID]\n",
            "needs a list of 1 paper values",
        ),
        (
            "".join(f"  - {{name: a{i}}}\n" for i in range(65)).replace("a0", "a"),
            None,
            "",
            "65 arms asked for, at most 64",
        ),
    ],
)
def test_a_study_file_with_an_unknown_key_or_too_many_arms_is_one_line(tmp_path, runs_dir, arms, rows, top, said):
    """Finding 9: an arm's `sett:` (for `set:`) was ignored, and the arm ran with the parent's pruning method; a
    10,000-arm file made hundreds of forks unasked. Both are one line now, before anything is written (`--base`
    names no run: the definition is refused before the base is looked up)."""
    path = _study_file(tmp_path, arms, rows, top)
    with pytest.raises(UserError, match=re.escape(said)):
        load_definition(str(path))
    p = run_cli("study", str(path), "--base", "nosuch", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert said in p.stderr
    assert not any(x.is_dir() for x in runs_dir.iterdir())


@pytest.mark.parametrize("name", ["../../esc", ".hidden", "a b", "$(touch x)", "x;rm", "a/b", "é", "x" * 97])
def test_every_arm_name_and_the_study_id_are_checked_before_anything_is_written(tmp_path, runs_dir, name):
    """Finding 9: an arm named `../../esc` was found only after study.json and two forks existed, and every
    `study resume` failed. Arm names and the study id are plain run-name parts, checked first."""
    path = _study_file(
        tmp_path,
        arms=f"  - {{name: ok}}\n  - {{name: {json.dumps(name)}}}\n",
        rows="  - {label: r, arm: ok, model: progressive}",
        file="bad",
    )
    with pytest.raises(UserError, match="is not a plain name"):
        load_definition(str(path))
    defn = load_definition(str(_study_file(tmp_path)))
    with pytest.raises(UserError, match="is not a plain name"):
        create_study({**defn, "arms": [*defn["arms"], {"name": name}]}, "s", "tiny", None, [], runs_dir)
    with pytest.raises(UserError, match="study name .* is not a plain name"):
        create_study(defn, name, "tiny", None, [], runs_dir)
    p = run_cli("study", str(path), "--base", "nosuch", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert "is not a plain name" in p.stderr
    p = run_cli("study", str(_study_file(tmp_path)), "--name", name, "--base", "nosuch", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert "study name" in p.stderr
    assert not any(x.is_dir() for x in runs_dir.iterdir()) and not (tmp_path / "x").exists()


MILESTONES = """
title: arms at milestones of one base
base: {train.steps: 10, train.keep: [5]}
arms:
  - {name: early, at: 5, set: {prune.method: none}}
  - {name: late, set: {prune.method: none}}
rows:
  - {label: "5 steps", arm: early, model: progressive}
  - {label: "10 steps", arm: late, model: progressive}
"""


def test_a_study_forks_its_arms_from_milestones_of_its_own_base(tmp_path, runs_dir):
    """The definition's ``base`` sets the study's stage 1 (10 steps, a milestone at 5); arm ``at: 5`` forks the
    milestone, the other arm the final base. A milestone the base does not keep is one line, nothing written."""
    import torch

    spec = tmp_path / "m.yaml"
    spec.write_text(MILESTONES)
    run_cli(
        "study",
        str(spec),
        "--name",
        "m",
        *MICRO,
        "-S",
        "finetune.steps=2",
        "-S",
        "finetune.batch_size=8",
        "-S",
        "control.enabled=false",
        "-S",
        "sample.n=4",
        "-S",
        "sample.steps=3",
        "-S",
        "eval.loss_images=16",
        "-S",
        "eval.fid=false",
        "-S",
        "eval.steps=3",
        "-S",
        "schedule.groups=2",
        "--runs-dir",
        runs_dir,
        check=0,
    )
    base = json.loads((runs_dir / "m-base" / "config.json").read_text())["train"]
    assert base["steps"] == 10 and base["keep"] == [5]
    early = json.loads((runs_dir / "m-early" / "meta.json").read_text())["base"]
    assert early["run"] == "m-base" and early["step"] == 5
    kept = torch.load(runs_dir / "m-base" / "milestones" / "step0000005.pt", weights_only=True)["state"]
    got = torch.load(runs_dir / "m-early" / "models" / "base.pt", weights_only=True)["state"]
    assert all(torch.equal(kept[k], got[k]) for k in kept)
    assert json.loads((runs_dir / "m-late" / "meta.json").read_text())["base"].get("step") is None
    assert _status(runs_dir, "m-early") == "succeeded" and _status(runs_dir, "m-late") == "succeeded"
    from core.manager.studies import arm_base

    other = load_definition("table2")
    rec = create_study(other, "t2", "tiny", "m-base@5", [], runs_dir)  # a study on a milestone of another's base
    assert rec["base"] == "m-base" and rec["base_at"] == 5
    assert arm_base(rec, other["arms"][0]) == "m-base@5"
    with pytest.raises(UserError, match="kept no milestone at step 6"):
        create_study(other, "t3", "tiny", "m-base@6", [], runs_dir)
    spec.write_text(MILESTONES.replace("at: 5", "at: 7"))
    p = run_cli("study", str(spec), "--name", "m2", *MICRO, "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert "forks milestone 7, which the base does not keep (train.keep: 5)" in p.stderr
    assert not (runs_dir / "studies" / "m2").exists() and not (runs_dir / "m2-base").exists()


def test_an_arm_with_seeds_is_one_run_per_seed_and_its_row_aggregates_them_as_worked_by_hand(tmp_path, runs_dir):
    """seeds: [0, 1, 2] makes ARM-s0..s2 (seed set on each); the row over them is the mean with a t-interval over
    seeds. By hand, FIDs 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138,
    so [-0.484138, 4.484138]; the seeds' own bootstrap intervals [0.5, 1.5], [1.5, 2.5], [2.5, 3.5] average to
    [1.5, 2.5] (sampling noise alone: narrower than the spread over seeds)."""
    from core.manager.studies import over_seeds, results

    spec = tmp_path / "seeds.yaml"
    spec.write_text(
        "title: seeds\narms:\n  - {name: a, seeds: [0, 1, 2], set: {prune.method: none}}\n"
        "rows:\n  - {label: over seeds, arm: a, model: progressive}\n"
    )
    defn = load_definition(str(spec))
    assert [(a["name"], a["set"]) for a in defn["arms"]] == [
        (f"a-s{i}", {"prune.method": "none", "seed": i}) for i in range(3)
    ]
    rec = create_study(defn, "sd", "tiny", None, [], runs_dir)
    assert rec["arms"] == {f"a-s{i}": f"sd-a-s{i}" for i in range(3)}
    for i, fid in enumerate((1.0, 2.0, 3.0)):
        run = runs_dir / f"sd-a-s{i}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps(C.resolve("tiny", None, [f"seed={i}"])))
        (run / "eval.json").write_text(
            json.dumps(
                {
                    "models": {
                        "progressive": {"fid": fid, "fid_ci": [fid - 0.5, fid + 0.5], "macs": 7.0},
                        "base": {"macs": 10.0},
                    }
                }
            )
        )
    row = results(rec, runs_dir)["rows"][0]
    assert row["seeds"] == 3 and row["fid"] == pytest.approx(2.0) and row["fid_sd"] == pytest.approx(1.0)
    assert row["fid_ci"] == pytest.approx([-0.484138, 4.484138], abs=1e-6)
    assert row["fid_boot_ci"] == pytest.approx([1.5, 2.5]) and row["fid_seeds"] == [1.0, 2.0, 3.0]
    assert row["macs_ratio"] == pytest.approx(0.7) and row["kid"] is None
    assert over_seeds([5.0, 5.0])["ci"] == [5.0, 5.0]
    spec.write_text(spec.read_text().replace("[0, 1, 2]", "[1]"))
    assert_clean_error(run_cli("study", str(spec), "--name", "x", "--runs-dir", runs_dir))


def test_milestone_arms_start_while_the_base_trains_on(tmp_path, runs_dir):
    """With two slots, the study's stage 1 trains as a background job on one while the arm that forks its
    milestone (kept at step 5) runs on the other: that arm's pipeline starts before stage 1 has ended; the arm
    on the final base waits for it. Both end succeeded, and the base run is partial (only stage 1 is its job)."""
    spec = tmp_path / "m.yaml"
    spec.write_text(MILESTONES.replace("train.steps: 10", "train.steps: 60"))
    p = run_cli(
        "study",
        str(spec),
        "--name",
        "e",
        "--parallel",
        "2",
        *MICRO,
        *[
            x
            for kv in (
                "finetune.steps=2",
                "finetune.batch_size=8",
                "control.enabled=false",
                "sample.n=4",
                "sample.steps=3",
                "eval.loss_images=16",
                "eval.fid=false",
                "eval.steps=3",
                "schedule.groups=2",
            )
            for x in ("-S", kv)
        ],
        "--runs-dir",
        runs_dir,
        env={"STEPADAPT_STEP_PAUSE": "0.25"},  # stage 1 trains on for 15 s at least: the early arm starts meanwhile
        check=0,
    )
    assert "arms start as their milestones are kept" in p.stderr, p.stderr
    from core.store import Store

    store = Store(runs_dir / "stepadapt.db")
    stage1 = next(j for j in store.jobs("e-base") if j["stage"] == "base")
    early = next(j for j in store.jobs("e-early") if j["stage"] == "pipeline")
    late = next(j for j in store.jobs("e-late") if j["stage"] == "pipeline")
    assert early["started"] < stage1["ended"] <= late["started"], (early["started"], stage1["ended"], late["started"])
    assert _status(runs_dir, "e-early") == "succeeded" and _status(runs_dir, "e-late") == "succeeded"
    assert _status(runs_dir, "e-base") == "partial"


def test_the_gap_by_base_steps_and_the_crossover_as_worked_by_hand(tmp_path, runs_dir):
    """Arms p1 (at 1,000 base steps), p2 (2,000), p4 (4,000, three seeds) and t2 (another series). Gaps to the
    control (progressive minus control, FID): p1 +0.05 [+0.01, +0.09] worse, p2 -0.03 [-0.05, -0.01] better; p4's
    seeds -0.02, -0.04, -0.06: mean -0.04, sd 0.02, t(0.975, 2) * 0.02 / sqrt(3) = 0.049683, so [-0.0897, +0.0097]:
    n.s. over seeds, although every seed's own bootstrap interval says better. So the proxy series has no crossover
    up to 4,000 steps (its last point does not pay); had p4 paid, the crossover would be 2,000."""
    from core.manager.studies import results

    spec = tmp_path / "gaps.yaml"
    spec.write_text(
        "title: gaps\narms:\n"
        "  - {name: p1, set: {prune.method: proxy}}\n  - {name: p2, set: {prune.method: proxy}}\n"
        "  - {name: p4, seeds: [0, 1, 2], set: {prune.method: proxy}}\n  - {name: t2, set: {prune.method: none}}\n"
        "rows:\n  - {label: p1, arm: p1, model: progressive}\n"
    )
    rec = create_study(load_definition(str(spec)), "g", "tiny", None, [], runs_dir)

    def arm(name, steps, gap, ci):
        run = runs_dir / f"g-{name}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps(C.resolve("tiny", None, [])))
        comparison = {"model": "progressive", "against": "control", "fid": {"diff": gap, "ci": ci}}
        models = {"base": {"train_steps": steps, "macs": 1.0}, "progressive": {"fid": 1.0, "macs": 0.7}}
        (run / "eval.json").write_text(json.dumps({"models": models, "comparisons": [comparison]}))

    arm("p1", 1000, 0.05, [0.01, 0.09])
    arm("p2", 2000, -0.03, [-0.05, -0.01])
    for i, g in enumerate((-0.02, -0.04, -0.06)):
        arm(f"p4-s{i}", 4000, g, [g - 0.01, g + 0.005])
    arm("t2", 2000, 0.0, [-0.01, 0.01])
    res = results(rec, runs_dir)
    proxy = [p for p in res["gaps"] if p["series"] == 'prune.method="proxy"']
    assert [(p["base_steps"], p["seeds"], p["gaps"]["control"]["verdict"]) for p in proxy] == [
        (1000, 1, "worse"),
        (2000, 1, "better"),
        (4000, 3, "same"),
    ]
    assert proxy[2]["gaps"]["control"]["diff"] == pytest.approx(-0.04)
    assert proxy[2]["gaps"]["control"]["ci"] == pytest.approx([-0.089683, 0.009683], abs=1e-6)
    assert res["crossover"] == {'prune.method="proxy"': {"against": "control", "step": None, "up_to": 4000}}
    shown = run_cli("study", "show", "g", "--runs-dir", runs_dir, env={"COLUMNS": "200"}, check=0).stdout
    assert 'prune.method="proxy": no crossover up to 4,000 base steps (against the control)' in shown
    for i in range(3):  # every seed pays by more: the mean's interval excludes zero, and 2,000 steps on pays
        run = runs_dir / f"g-p4-s{i}"
        ev = json.loads((run / "eval.json").read_text())
        ev["comparisons"][0]["fid"]["diff"] = -0.04 - 0.001 * i
        (run / "eval.json").write_text(json.dumps(ev))
    res = results(rec, runs_dir)
    assert res["crossover"]['prune.method="proxy"']["step"] == 2000
