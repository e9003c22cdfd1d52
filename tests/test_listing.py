"""Listing and inspecting runs never imports torch (it costs seconds and hundreds of MB per command): the
commands that read the store and the run folders, on a real run with a trained base, a schedule and a running
job, each in a fresh process."""

import json
import subprocess
import sys

from core.method.schedule import run_schedule
from core.runs import Run
from tests.conftest import MICRO, REPO, run_cli

PROBE = """
import sys
from stepadapt_cli.main import cli
try:
    cli(sys.argv[1:], prog_name="stepadapt")
except SystemExit as e:
    code = e.code
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code, file=sys.stderr)
"""

LISTINGS = [
    ["runs"],
    ["runs", "--json"],
    ["show", "l"],
    ["show", "l", "--json"],
    ["compare", "l", "l"],
    ["logs", "l"],
    ["llm-log", "l"],
    ["schedule", "l", "--json"],
    ["kill", "l"],
    ["study", "list"],
    ["macs", "--help"],
]


def test_listing_commands_never_import_torch(runs_dir):
    rd = ["--runs-dir", str(runs_dir)]
    run_cli("train", "--preset", "tiny", "--name", "l", "--train-steps", "2", *MICRO, *rd, check=0)
    run_schedule(Run(runs_dir / "l"))  # schedule.json, as the pipeline's schedule stage writes it
    for args in LISTINGS:
        p = subprocess.run(
            [sys.executable, "-c", PROBE, *args, *rd], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith("NO-TORCH"), f"stepadapt {' '.join(args)} imported torch ({p.stderr[-500:]})"
    shown = json.loads(run_cli("show", "l", "--json", *rd, check=0).stdout)
    assert shown["stages"]["base"] == "done" and shown["stages"]["schedule"] == "done"  # read from the files
