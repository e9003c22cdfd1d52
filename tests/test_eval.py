"""FID (clean-fid with the offline domain feature net), `stepadapt eval` exit codes, `stepadapt report`."""
import json
import re

import numpy as np
import pytest
import torch

from core import config as C
from core.training.data import load_dataset
from core.evaluation.fid import features, fid_between, make_extractor, reference_stats
from tests.conftest import MICRO, assert_clean_error, run_cli


@pytest.fixture(scope="module")
def digits():
    cfg = C.resolve("tiny", None, [])
    return cfg, load_dataset(cfg, split="all")


def test_fid_is_zero_against_itself_grows_with_noise_and_the_net_is_cached(digits, tmp_path, monkeypatch):
    from core.training.data import Subset

    monkeypatch.delenv("STEPADAPT_CACHE")  # this test's own cache: RUNS_DIR/.cache
    cfg, full = digits
    data = Subset(full, torch.arange(2000), "-first2000")  # a dataset of its own: the net is trained here, then cached
    logs = []
    ext, info = make_extractor(cfg, data, tmp_path, log=logs.append)
    assert info["kind"].startswith("domain FID") and not info["cached"]
    assert info["val_accuracy"] > 0.8  # it learned the digits: its features mean something
    imgs = data.get(torch.arange(600))
    f = features(ext, imgs)
    assert f.shape == (600, 128)
    assert abs(fid_between(f, f)) < 1e-6
    g = torch.Generator().manual_seed(0)
    fids = []
    for sigma in (8.0, 32.0, 96.0):
        noisy = (imgs.float() + sigma * torch.randn(imgs.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        fids.append(fid_between(f, features(ext, noisy)))
    assert 0 < fids[0] < fids[1] < fids[2]
    # second use: loaded from the cache, not trained; same features
    mtime = next((tmp_path / ".cache" / "features").iterdir()).stat().st_mtime_ns
    ext2, info2 = make_extractor(cfg, data, tmp_path, log=logs.append)
    assert info2["cached"] and info2["id"] == info["id"]
    assert np.allclose(features(ext2, imgs[:50]), f[:50], atol=1e-5)
    assert next((tmp_path / ".cache" / "features").iterdir()).stat().st_mtime_ns == mtime
    ref = reference_stats(ext, info, data, cfg, tmp_path)
    assert not ref["cached"] and ref["mu"].shape == (128,)
    assert reference_stats(ext, info, data, cfg, tmp_path)["cached"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro run with a base and a progressive model (train + finetune through the CLI)."""
    rd = tmp_path_factory.mktemp("evalruns")
    extra = [*MICRO, "-S", "schedule.groups=2", "-S", "eval.loss_images=16"]
    run_cli("train", "--preset", "tiny", "--run", "ev", "--steps", "6", *extra, "--runs-dir", rd, check=0)
    run_cli("finetune", "ev", "--steps", "2", "--runs-dir", rd, check=0)
    return rd


EVAL_KEYS = {"run", "kind", "extractor", "n", "steps", "models", "baseline", "checks", "passed", "exit_code"}


def test_eval_json_keys_and_exit_codes(trained):
    rd = ["--runs-dir", trained]
    p = run_cli("eval", "ev", "--n", "16", "--steps", "4", "--json", *rd, check=0)
    out = json.loads(p.stdout)
    assert set(out) == EVAL_KEYS
    assert set(out["models"]) == {"base", "progressive"}
    for r in out["models"].values():
        assert set(r) == {"fid", "params", "macs", "macs_sampled", "loss", "train_steps"} and r["fid"] > 0
    assert out["kind"].startswith("domain FID") and out["n"] == 16 and out["steps"] == 4 and out["passed"]
    ev = json.loads((trained / "ev" / "eval.json").read_text())
    assert ev["models"]["progressive"]["fid"] == out["models"]["progressive"]["fid"]
    assert (trained / "ev" / "samples" / "eval_progressive.png").exists()
    fid = out["models"]["progressive"]["fid"]
    # the gate: --max-fid on the progressive model (exit 4), vs a baseline run (exit 5)
    p = run_cli("eval", "ev", "--n", "16", "--steps", "4", "--max-fid", str(fid / 2), "--json", *rd)
    assert p.returncode == 4 and json.loads(p.stdout)["checks"]["max_fid_ok"] is False
    assert "reused" in p.stderr  # same n, steps and extractor: FID not recomputed
    run_cli("eval", "ev", "--n", "16", "--steps", "4", "--max-fid", str(fid * 2), *rd, check=0)
    p = run_cli("eval", "ev", "--n", "16", "--steps", "4", "--baseline", "ev", "--json", *rd, check=0)
    assert json.loads(p.stdout)["baseline"]["fid"] == pytest.approx(fid)
    p = run_cli("eval", "ev", "--n", "16", "--steps", "4", "--baseline", "ev", "--tolerance", "-0.1", *rd)
    assert p.returncode == 5 and "WORSE" in p.stdout


def test_eval_bad_input(trained, tmp_path):
    rd = ["--runs-dir", trained]
    assert_clean_error(run_cli("eval", "ev", "--n", "1", *rd))
    assert_clean_error(run_cli("eval", "ev", "--inception", tmp_path / "missing.pt", *rd))
    bad = tmp_path / "inception-2015-12-05.pt"
    bad.write_bytes(b"not a torchscript file")
    p = run_cli("eval", "ev", "--n", "4", "--steps", "2", "--inception", bad, *rd)
    assert_clean_error(p)
    assert "Inception" in p.stderr
    run_cli("train", "--preset", "tiny", "--run", "empty", "--steps", "0", *MICRO, *rd, check=0)
    (trained / "empty" / "models" / "base.pt").unlink()
    p = run_cli("eval", "empty", *rd)
    assert_clean_error(p)
    assert "no trained model" in p.stderr


def test_report_renders_with_its_images(trained):
    rd = ["--runs-dir", trained]
    run_cli("eval", "ev", "--n", "16", "--steps", "4", *rd, check=0)
    p = run_cli("report", "ev", *rd, check=0)
    page = (trained / "ev" / "report" / "index.html").read_text()
    assert "domain FID" in page and "Table 1 style" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert {"schedule.png", "losses.png", "fid_macs.png", "samples_base.png", "samples_progressive.png"} <= set(srcs)
    for s in srcs:
        assert (trained / "ev" / "report" / s).stat().st_size > 1000
    md = (trained / "ev" / "report" / "report.md").read_text()
    assert "| ev | progressive |" in md
    assert "report" in p.stdout
