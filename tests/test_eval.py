"""FID (clean-fid with the offline domain feature net), `stepadapt eval` exit codes, `stepadapt report`."""

import json
import re

import numpy as np
import pytest
import torch

from core import config as C
from core.evaluation.features import features, make_extractor, reference_stats
from core.evaluation.metrics import fid_between
from core.training.data import load_dataset
from tests.conftest import MICRO, assert_clean_error, run_cli

pytestmark = pytest.mark.xdist_group("eval")  # its module fixture is built once, on one worker


@pytest.fixture(scope="module")
def digits():
    cfg = C.resolve("tiny", None, [])
    return cfg, load_dataset(cfg, split="all")


def test_fid_is_zero_against_itself_grows_with_noise_and_the_net_is_cached(digits, tmp_path):
    """The bundled digits' net ships with the package: the session's shared cache gets a copy of it on first
    use (by this test or another; the others wait on its lock), nothing is trained, and every use loads it."""
    from core.evaluation.features import SHIPPED_NETS, cache_dir, dataset_key

    cfg, data = digits
    logs = []
    cached_net = cache_dir(tmp_path) / "features" / f"domain-{dataset_key(data, cfg)}.pt"
    existed = cached_net.exists()
    ext, info = make_extractor(cfg, data, tmp_path, log=logs.append)
    assert info["kind"].startswith("domain FID") and info["cached"]
    assert not any("training" in line for line in logs)
    if existed:  # copied before (another worker may copy it between the look above and this use: then no line)
        assert not any("shipped with stepadapt" in line for line in logs)
    assert cached_net.read_bytes() == (SHIPPED_NETS / cached_net.name).read_bytes()
    assert info["val_accuracy"] > 0.8  # it learned the digits: its features mean something
    imgs = data.get(torch.arange(600))
    f = features(ext, imgs)
    assert f.shape == (600, 128 + 64)  # shape (penultimate) + texture (first block mean and std)
    assert abs(fid_between(f, f)) < 1e-6
    g = torch.Generator().manual_seed(0)
    fids = []
    for sigma in (8.0, 32.0, 96.0):
        noisy = (imgs.float() + sigma * torch.randn(imgs.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        fids.append(fid_between(f, features(ext, noisy)))
    assert 0 < fids[0] < fids[1] < fids[2]
    # second use: loaded from the cache, not trained again; same features
    mtime, logs = cached_net.stat().st_mtime_ns, []
    ext2, info2 = make_extractor(cfg, data, tmp_path, log=logs.append)
    assert info2["cached"] and info2["id"] == info["id"] and not logs
    assert np.allclose(features(ext2, imgs[:50]), f[:50], atol=1e-5)
    assert cached_net.stat().st_mtime_ns == mtime
    ref = reference_stats(ext, info, data, cfg, tmp_path, n=1500)  # statistics of their own: computed, then cached
    assert not ref["cached"] and ref["mu"].shape == (192,) and ref["feats"].shape == (1500, 192)
    assert reference_stats(ext, info, data, cfg, tmp_path, n=1500)["cached"]


def test_a_dataset_without_a_shipped_net_trains_its_own_once_then_loads_it(tmp_path, monkeypatch):
    """The digits at 16 px have no shipped net: the first use trains one on the labels (it learns them) and
    caches it; the second loads it, with the same features."""
    monkeypatch.setenv("STEPADAPT_CACHE", str(tmp_path / "cache"))
    cfg = C.resolve("tiny", None, ["model.image_size=16"])
    data = load_dataset(cfg, split="all")
    logs = []
    ext, info = make_extractor(cfg, data, tmp_path, log=logs.append)
    assert any("training the domain feature network" in line for line in logs) and not info["cached"]
    assert info["val_accuracy"] > 0.8
    logs2 = []
    ext2, info2 = make_extractor(cfg, data, tmp_path, log=logs2.append)
    assert info2["cached"] and info2["id"] == info["id"] and not logs2
    imgs = data.get(torch.arange(50))
    assert np.allclose(features(ext2, imgs), features(ext, imgs), atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro run with a base and a progressive model (train + finetune through the CLI); its fine-tunes keep
    their weights at every step for the FID curve (finetune.fid_n)."""
    rd = tmp_path_factory.mktemp("evalruns")
    extra = [
        *MICRO,
        "-S",
        "schedule.groups=2",
        "-S",
        "eval.loss_images=16",
        "-S",
        "finetune.eval_every=1",
        "-S",
        "finetune.fid_n=16",
    ]
    run_cli("train", "--preset", "tiny", "--name", "ev", "--train-steps", "6", *extra, "--runs-dir", rd, check=0)
    run_cli("finetune", "ev", "--finetune-steps", "2", "--runs-dir", rd, check=0)
    run_cli("control", "ev", "--runs-dir", rd, check=0)
    return rd


def test_the_control_trains_exactly_the_steps_and_images_the_finetunes_used(trained):
    from core.method.fields import artifact_fields, artifact_step
    from core.runs import Run

    run = Run(trained / "ev")
    groups = [g for g in range(2) if run.model(run.group_stage(g)).exists()]
    ft_steps = sum(artifact_step(run.model(run.group_stage(g))) for g in groups)
    art = artifact_fields(run.model("control"))
    assert ft_steps == 2 * len(groups) and art["added_steps"] == ft_steps
    assert art["step"] == artifact_step(run.ckpt("base")) + ft_steps == 6 + ft_steps
    assert art["added_images"] == ft_steps * run.config["finetune"]["batch_size"]
    ckpt = torch.load(run.ckpt("control"), map_location="cpu", weights_only=True)
    base = torch.load(run.ckpt("base"), map_location="cpu", weights_only=True)
    assert ckpt["opt"]["param_groups"][0]["lr"] == run.config["finetune"]["lr"]  # the fine-tune's rate
    # it continued stage 1's optimiser: Adam's step count went on from the base's
    first = next(iter(base["opt"]["state"].values()))["step"]
    assert next(iter(ckpt["opt"]["state"].values()))["step"] == first + ft_steps
    steps = [json.loads(l)["step"] for l in run.metrics("control").read_text().splitlines()]
    assert steps and min(steps) > 6 and max(steps) == 6 + ft_steps


EVAL_KEYS = {
    "run",
    "kind",
    "extractor",
    "n",
    "steps",
    "primary",
    "models",
    "comparisons",
    "fid_curve",
    "against",
    "checks",
    "passed",
    "exit_code",
}
MODEL_KEYS = {
    "fid",
    "fid_ci",
    "kid",
    "kid_ci",
    "precision",
    "recall",
    "params",
    "macs",
    "macs_sampled",
    "loss",
    "loss_ci",
    "loss_groups",
    "train_steps",
}


def test_eval_json_keys_and_exit_codes(trained):
    rd = ["--runs-dir", trained]
    p = run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", "--json", *rd, check=0)
    out = json.loads(p.stdout)
    assert set(out) == EVAL_KEYS
    assert set(out["models"]) == {"base", "control", "progressive"}
    for r in out["models"].values():
        assert set(r) == MODEL_KEYS and r["fid"] > 0
        assert r["kid_ci"][0] <= r["kid"] <= r["kid_ci"][1] and r["loss_ci"][0] < r["loss"] < r["loss_ci"][1]
    assert out["models"]["control"]["train_steps"] == out["models"]["progressive"]["train_steps"]
    assert [(c["model"], c["against"]) for c in out["comparisons"]] == [
        ("progressive", "control"),
        ("progressive", "base"),
        ("control", "base"),
    ]
    for c in out["comparisons"]:
        assert c["verdict"] in ("better", "worse", "no significant difference") and c["fid"]["paired"]
        assert set(c["loss_groups"]) == set(out["models"]["base"]["loss_groups"])
    assert out["kind"].startswith("domain FID") and out["n"] == 16 and out["steps"] == 4 and out["passed"]
    ev = json.loads((trained / "ev" / "eval.json").read_text())
    assert ev["models"]["progressive"]["fid"] == out["models"]["progressive"]["fid"]
    # FID during fine-tuning: the whole model at steps 0 (just pruned), 1, 2; its last point is the final model,
    # measured from the same noise with the same n, so it equals the progressive model's FID exactly
    curve = out["fid_curve"]
    assert [r["step"] for r in curve] == [0, 1, 2] and all(r["n"] == 16 for r in curve)
    assert (
        curve[-1]["fid"] == out["models"]["progressive"]["fid"]
        and curve[-1]["kid"] == out["models"]["progressive"]["kid"]
    )
    assert curve[0]["fid"] != curve[-1]["fid"]
    assert all(r["fid_ci"][0] <= r["fid"] <= r["fid_ci"][1] for r in curve)
    assert (trained / "ev" / "samples" / "eval_control.png").exists()
    fid = out["models"]["progressive"]["fid"]
    # the gate: --max-fid on the progressive model (exit 4), vs a baseline run (exit 5)
    before = (trained / "ev" / "eval.json").stat().st_mtime_ns
    p = run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", "--max-fid", str(fid / 2), "--json", *rd)
    assert p.returncode == 4 and json.loads(p.stdout)["checks"]["max_fid_ok"] is False
    assert p.stderr.count("reused") == 4  # same models, curve and settings: nothing measured again, nothing rewritten
    assert (trained / "ev" / "eval.json").stat().st_mtime_ns == before
    run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", "--max-fid", str(fid * 2), *rd, check=0)
    p = run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", "--against", "ev", "--json", *rd, check=0)
    b = json.loads(p.stdout)["against"]
    assert b["fid"]["diff"] == 0 and b["fid"]["verdict"] == "no significant difference" and b["fid"]["paired"]
    p = run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", "--against", "ev", "--tolerance", "-0.5", *rd)
    assert p.returncode == 5 and "WORSE" in p.stdout


def _pngs(folder, images):
    from PIL import Image

    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy()).save(folder / f"{i:04d}.png")
    return folder


def test_eval_images_scores_folders_and_two_copies_agree(digits, tmp_path):
    _, data = digits
    imgs = data.get(torch.arange(40))
    a = _pngs(tmp_path / "a", imgs)
    b = tmp_path / "b"
    import shutil

    shutil.copytree(a, b)
    p = run_cli("eval", "--images", a, "--images", b, "--preset", "tiny", "--json", "--runs-dir", tmp_path, check=0)
    out = json.loads(p.stdout)
    assert [f["n"] for f in out["folders"]] == [40, 40]
    assert abs(out["between"]["fid_between"]) < 1e-6 and out["between"]["paired"]
    assert out["between"]["fid"]["diff"] == 0 and out["between"]["fid"]["verdict"] == "no significant difference"
    assert out["between"]["kid"]["diff"] == 0 and out["between"]["kid"]["verdict"] == "no significant difference"
    assert out["folders"][0]["fid"] == out["folders"][1]["fid"]


def test_eval_images_bad_folders_are_one_line_errors(digits, tmp_path):
    _, data = digits
    rd = ["--preset", "tiny", "--runs-dir", tmp_path]
    (tmp_path / "empty").mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.png").write_text("not an image")
    mixed = _pngs(tmp_path / "mixed", data.get(torch.arange(3)))
    from PIL import Image

    Image.new("L", (28, 28)).save(mixed / "small.png")
    for folder, words in (
        (tmp_path / "empty", "no images"),
        (notes, "not an image"),
        (mixed, "28x28"),
        (tmp_path / "missing", "not a folder"),
    ):
        p = run_cli("eval", "--images", folder, *rd)
        assert_clean_error(p)
        assert words in p.stderr
    assert_clean_error(run_cli("eval", "--runs-dir", tmp_path))  # neither a run nor --images


def test_eval_bad_input(trained, tmp_path):
    rd = ["--runs-dir", trained]
    assert_clean_error(run_cli("eval", "ev", "--samples", "1", *rd))
    assert_clean_error(run_cli("eval", "ev", "--inception", tmp_path / "missing.pt", *rd))
    bad = tmp_path / "inception-2015-12-05.pt"
    bad.write_bytes(b"not a torchscript file")
    p = run_cli("eval", "ev", "--samples", "4", "--sample-steps", "2", "--inception", bad, *rd)
    assert_clean_error(p)
    assert "Inception" in p.stderr
    run_cli("train", "--preset", "tiny", "--name", "empty", "--train-steps", "0", *MICRO, *rd, check=0)
    (trained / "empty" / "models" / "base.pt").unlink()
    p = run_cli("eval", "empty", *rd)
    assert_clean_error(p)
    assert "no trained model" in p.stderr


def test_report_renders_with_its_images(trained):
    rd = ["--runs-dir", trained]
    run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", *rd, check=0)
    p = run_cli("report", "ev", *rd, check=0)
    page = (trained / "ev" / "report" / "index.html").read_text()
    assert "domain FID" in page and "Table 1 style" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert {"schedule.png", "losses.png", "fid_macs.png", "samples.png", "heldout.png", "fid_curve.png"} <= set(srcs)
    assert "progressive vs control" in page and "per timestep group" in page
    for s in srcs:
        assert (trained / "ev" / "report" / s).stat().st_size > 1000
    md = (trained / "ev" / "report" / "report.md").read_text()
    assert re.search(r"^\| progressive \|", md, re.M) and re.search(r"^\| control \|", md, re.M), md[:800]
    assert "report" in p.stdout


def test_fid_curve_has_only_the_steps_every_group_reached_and_measures_only_what_changed(trained):
    """A group whose weights at a step are missing takes that step off the curve; when they come back, only that
    step is measured again (the others are reused), and ``eval`` prints the curve with its lowest point."""
    rd = ["--runs-dir", trained]
    run = trained / "ev"
    run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", *rd, check=0)
    snap = sorted((run / "models" / "snapshots").glob("group*/step0000002.pt"))[-1]
    aside = snap.with_name("aside.pt")
    snap.rename(aside)
    p = run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", "--json", *rd, check=0)
    assert [r["step"] for r in json.loads(p.stdout)["fid_curve"]] == [0, 1]
    assert "at fine-tune step" not in p.stderr
    aside.rename(snap)
    p = run_cli("eval", "ev", "--samples", "16", "--sample-steps", "4", *rd, check=0)
    assert re.findall(r"at fine-tune step (\d+)", p.stderr) == ["2"]
    assert "during fine-tuning" in p.stdout and "lowest FID" in p.stdout
    assert [json.loads(l)["step"] for l in (run / "metrics" / "fid_curve.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_the_swap_test_puts_one_groups_model_into_the_base_and_compares_it_paired(trained):
    """eval --swap: per non-empty group, the base everywhere but that group's timesteps, compared with the base's
    samples from the same noise: a paired difference (swap minus base) with its interval and a verdict per group,
    recorded in eval.json and printed with a one-sentence summary."""
    p = run_cli(
        "eval", "ev", "--samples", "16", "--sample-steps", "2", "--swap", "--json", "--runs-dir", trained, check=0
    )
    swap = json.loads(p.stdout)["swap"]
    assert [r["group"] for r in swap["rows"]] == [0, 1] and swap["n"] == 16
    for r in swap["rows"]:
        d = r["diff"]["fid"]
        assert d["paired"] and d["ci"][0] <= d["diff"] <= d["ci"][1]
        # the same difference two ways (the paired statistic, and two FIDs subtracted): equal to float precision
        assert d["diff"] == pytest.approx(r["fid"] - swap["base"]["fid"], rel=1e-6, abs=1e-9)
        assert d["verdict"] in ("better", "worse", "no significant difference")
        assert 0 < r["macs_ratio"] <= 1.0
    stored = json.loads((trained / "ev" / "eval.json").read_text())["swap"]
    assert stored["rows"] == swap["rows"]
    table = run_cli(
        "eval", "ev", "--samples", "16", "--sample-steps", "2", "--swap", "--runs-dir", trained, check=0
    ).stdout
    assert "swap test" in table and "Swapping one group's model into the base" in table


def test_rows_scored_with_the_old_intervals_are_scored_again_from_their_stored_features_without_sampling(trained):
    """An eval.json row written before half-sampling intervals (no 'interval' key) is re-scored from the stored
    per-sample features: the same FID, the new interval, and no model is sampled again."""
    args = ("eval", "ev", "--samples", "16", "--sample-steps", "2", "--model", "both", "--json", "--runs-dir", trained)
    first = json.loads(run_cli(*args, check=0).stdout)["models"]["base"]
    path = trained / "ev" / "eval.json"
    ev = json.loads(path.read_text())
    row = ev["models"]["base"]
    row.pop("interval")
    row["fid_ci"] = [row["fid"] + 1.0, row["fid"] + 2.0]  # what the percentile bootstrap printed near zero
    path.write_text(json.dumps(ev))
    p = run_cli(*args, check=0)
    again = json.loads(p.stdout)["models"]["base"]
    assert "base: model and settings unchanged; its intervals scored again (half-sampling)" in p.stderr
    assert "sampling 16 images" not in p.stderr  # nothing drawn again
    assert again["fid"] == first["fid"] and again["fid_ci"] == first["fid_ci"]
    assert again["fid_ci"][0] <= again["fid"] <= again["fid_ci"][1]
    assert json.loads(path.read_text())["models"]["base"]["interval"] == "half-sampling"


def test_plot_overlays_curves_and_export_csv_writes_results_and_history(trained, tmp_path):
    """`plot` draws stage 1, the control and each group's fine-tune of a real run in one PNG; `export --csv`
    writes one row per model and metric with its interval (as eval.json holds them), `--history` every logged
    training number; bad choices are one line each."""
    import csv

    rd = ("--runs-dir", trained)
    run_cli("eval", "ev", "--samples", "16", "--sample-steps", "2", *rd, check=0)
    png = tmp_path / "c.png"
    p = run_cli("plot", "ev", "--metric", "mse", "--smooth", "0.5", "--out", png, *rd, check=0)
    assert "4 curves of mse" in p.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # base, control, 2 groups
    out = tmp_path / "r.csv"
    run_cli("export", "ev", "--csv", out, *rd, check=0)
    rows = list(csv.DictReader(out.open()))
    ev = json.loads((trained / "ev" / "eval.json").read_text())
    for model in ("base", "control", "progressive"):
        fid = next(r for r in rows if r["model"] == model and r["metric"] == "fid")
        want = ev["models"][model]
        assert float(fid["value"]) == want["fid"] and float(fid["lo"]) == want["fid_ci"][0], fid
    hist = tmp_path / "h.csv"
    run_cli("export", "ev", "--csv", hist, "--history", *rd, check=0)
    stages = {r["stage"] for r in csv.DictReader(hist.open())}
    assert {"base", "control", "group00", "group01"} <= stages, stages
    for bad in (
        ("plot", "ev", "--stage", "nonsense"),
        ("plot", "ev", "--smooth", "1.5"),
        ("export", "ev"),
        ("export", "ev", "--history", "--to-diffusers", tmp_path / "x"),
    ):
        p = run_cli(*bad, *rd)
        assert_clean_error(p)
