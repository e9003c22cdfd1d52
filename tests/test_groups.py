"""The test suite's own machinery: tests marked ``xdist_group`` share one worker under ``make test``'s
``--dist loadgroup`` (one Slurm test cluster, one trained fixture per module). pytest-xdist 3.8's loadgroup
silently stopped grouping under pytest 9, and every module fixture was built on both workers; pyproject.toml pins
a pytest it supports, and this test fails when the pair installed does not group."""

import os
import subprocess
import sys

GROUPED = """
import os
import pytest

pytestmark = pytest.mark.xdist_group("together")


@pytest.mark.parametrize("i", range(6))
def test_one(i):
    with open(os.environ["WORKERS_FILE"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_tests_of_one_xdist_group_run_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_free.py").write_text("def test_free():\n    pass\n")
    out = tmp_path / "workers"
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider"]
    p = subprocess.run(
        [*cmd, f"--basetemp={tmp_path / 'bt'}", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "WORKERS_FILE": str(out)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    workers = out.read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers
