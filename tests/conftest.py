import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# one cache of feature nets and FID statistics for the whole session, shared by the xdist workers (the domain
# net trains once: the first worker that needs it trains it, the other waits on its lock and loads it)
_RUN_UID = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ.setdefault(
    "STEPADAPT_CACHE",
    os.path.join(tempfile.gettempdir(), f"stepadapt-cache-{_RUN_UID}")
    if _RUN_UID
    else tempfile.mkdtemp(prefix="stepadapt-cache-"),
)
REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, env=None, timeout=600, check=None):
    """Run the real `stepadapt` CLI in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    e.pop("STEPADAPT_DEBUG", None)
    for k in ("COLUMNS", "LINES"):  # pytest-xdist's workers set them (80x24); a test that wants a width says so
        e.pop(k, None)
    if env:
        e.update(env)
    p = subprocess.run(
        [sys.executable, "-m", "stepadapt_cli.main", *map(str, args)],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check is not None:
        assert p.returncode == check, f"rc={p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}"
    return p


def assert_clean_error(p):
    """Bad input: non-zero exit, one line on stderr, no traceback."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr


@pytest.fixture
def runs_dir(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d


# a very small model for fast CPU tests (same code path as the presets)
MICRO = [
    "-S",
    "model.model_channels=16",
    "-S",
    "model.channel_mult=[1,2]",
    "-S",
    "model.attention_resolutions=[16]",
    "-S",
    "model.num_heads=2",
    "-S",
    "diffusion.steps=100",
    "-S",
    "train.batch_size=8",
    "-S",
    "finetune.batch_size=8",  # the fine-tunes and the controls train on batches as small as stage 1's
]
