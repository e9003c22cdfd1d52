"""What a round of attacks on the tool found, pinned: one writer per run, store and folder robustness,
names that look like markup, settings the run's config holds."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import MICRO, REPO, assert_clean_error, run_cli


def _train(name, rd, *extra):
    return run_cli("train", "--preset", "tiny", "--name", name, "--train-steps", "2", *MICRO, *extra, *rd, check=0)


def test_a_second_writer_of_a_run_is_refused_with_the_holder_named(runs_dir):
    """Two `train --resume` of one run at once used to both train it; the second now gets one line naming the
    first (its pid), and once the first is gone (even by SIGKILL) the lock is free again."""
    rd = ["--runs-dir", runs_dir]
    _train("one", rd)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stepadapt_cli.main",
            "train",
            "--name",
            "one",
            "--resume",
            "--train-steps",
            "100000",
            *map(str, rd),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        lock = runs_dir / "one" / ".lock"
        end = time.time() + 60
        while time.time() < end and f"pid {first.pid}" not in (lock.read_text() if lock.exists() else ""):
            time.sleep(0.2)
        p = run_cli("train", "--name", "one", "--resume", "--train-steps", "100000", *rd)
        assert_clean_error(p)
        assert f"being written by pid {first.pid}" in p.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    run_cli("train", "--name", "one", "--resume", "--train-steps", "3", *rd, check=0)  # a dead holder's lock is free


def test_resume_with_fewer_steps_than_done_is_refused(runs_dir):
    rd = ["--runs-dir", runs_dir]
    _train("done", rd)
    p = run_cli("train", "--name", "done", "--resume", "--train-steps", "1", *rd)
    assert_clean_error(p)
    assert "at step 2 already" in p.stderr and "give --train-steps 2 or more" in p.stderr


def test_a_store_from_a_newer_version_is_refused_with_both_versions_named(runs_dir):
    run_cli("runs", "--runs-dir", runs_dir, check=0)
    con = sqlite3.connect(runs_dir / "stepadapt.db")
    con.execute("insert into _migrations (name, applied) values ('099_from_the_future', 'later')")
    con.commit()
    con.close()
    p = run_cli("runs", "--runs-dir", runs_dir)
    assert_clean_error(p)
    from core.store import MIGRATIONS

    assert "099_from_the_future" in p.stderr and MIGRATIONS[-1][0] in p.stderr


def test_a_folder_with_a_truncated_config_does_not_hide_the_others(runs_dir):
    rd = ["--runs-dir", runs_dir]
    _train("good", rd)
    run_cli("fork", "good", "bad", *rd, check=0)  # a second run on the same stage 1, without training one
    cfg = runs_dir / "bad" / "config.json"
    cfg.write_text(cfg.read_text()[:40])
    rows = {r["name"]: r for r in json.loads(run_cli("runs", "--json", *rd, check=0).stdout)}
    assert rows["good"]["status"] == "partial" and rows["good"]["stages_done"] == 1
    assert rows["bad"]["status"] == "broken" and "JSONDecodeError" in rows["bad"]["error"]
    assert "bad" in run_cli("runs", *rd, check=0).stdout


def test_an_empty_run_name_is_an_error_not_the_default(runs_dir):
    p = run_cli("run", "--preset", "tiny", "--name", "", "--runs-dir", runs_dir)
    assert_clean_error(p)
    assert list(runs_dir.iterdir()) in ([], [runs_dir / "stepadapt.db"])


def test_a_name_with_markup_is_printed_as_written(runs_dir):
    rd = ["--runs-dir", runs_dir]
    _train("[red]x", rd)
    out = run_cli("show", "[red]x", *rd, check=0).stdout
    assert "[red]x" in out and str(runs_dir / "[red]x") in out
    assert "[red]x" in run_cli("runs", *rd, check=0).stdout


def test_prune_on_its_own_uses_the_runs_proxy_settings(runs_dir):
    """`stepadapt prune RUN --method proxy` asks as many rounds as the run's prune.rounds says."""
    rd = ["--runs-dir", runs_dir]
    _train(
        "cfg",
        rd,
        "-S",
        "prune.rounds=2",
        "-S",
        "schedule.groups=3",
        "-S",
        "prune.images=8",
        "-S",
        "prune.eval_images=4",
        "-S",
        "prune.batch_size=2",
        "-S",
        "prune.batches=1",
    )
    recs = json.loads(run_cli("prune", "cfg", "--method", "proxy", "--groups", "0", "--json", *rd, check=0).stdout)
    assert recs[0]["report"]["proxy"]["rounds"] == 2


def test_compare_and_llm_log_name_what_is_missing(runs_dir):
    rd = ["--runs-dir", runs_dir]
    _train("raw", rd)
    p = run_cli("compare", "raw", *rd, check=0)  # shows what exists (nothing yet) and says what is missing
    assert "no evaluation yet" in p.stdout and "stepadapt eval RUN" in p.stdout
    p = run_cli("llm-log", "raw", *rd)
    assert_clean_error(p)
    assert "no recorded LLM calls" in p.stderr


def test_every_command_summary_is_whole():
    """`stepadapt --help` lists every command with a summary that is not cut mid-phrase."""
    from stepadapt_cli.main import cli

    for name, cmd in cli.commands.items():
        short = cmd.get_short_help_str(limit=70)
        assert short and not short.endswith("...") and not short.endswith("(Eq."), (name, short)


def test_a_read_only_runs_folder_is_listed_and_shown_and_writes_are_one_line(runs_dir, tmp_path):
    """A runs folder on a read-only filesystem (here a read-only bind mount of a real one): `runs`, `show` and
    `llm-log` read it as it is (SQLite opened immutable: WAL cannot write its index there); `train --resume`,
    `resume` and `kill` say in one line that they cannot write, exit 2, and leave the store as it was."""
    rd = ["--runs-dir", runs_dir]
    _train("ro", rd)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(runs_dir), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root): the read-only folder cannot be made")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        before = (runs_dir / "stepadapt.db").read_bytes()
        rows = json.loads(run_cli("runs", "--json", "--runs-dir", ro, check=0).stdout)
        assert [(r["name"], r["status"]) for r in rows] == [("ro", "partial")]
        shown = json.loads(run_cli("show", "ro", "--json", "--runs-dir", ro, check=0).stdout)
        assert shown["stages"]["base"] == "done"
        for args, words in (
            (["train", "--name", "ro", "--resume", "--train-steps", "4"], "Read-only file system"),
            (["resume", "ro"], "is read-only"),
            (["kill", "ro"], ""),
        ):
            p = run_cli(*args, "--runs-dir", ro)
            assert_clean_error(p)
            assert words in p.stderr
        assert (runs_dir / "stepadapt.db").read_bytes() == before
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
