"""What is left to do has one answer: for each state of a run folder, the stages that `runs`, `show` and the
TUI call done are exactly those `resume` skips, and the stages it runs are the ones shown not done."""

import json
import os
import shutil
import time

import pytest

from core import config as C
from core.manager import stages
from core.manager.monitor import run_detail, run_summary, show_data
from core.manager.stages.base import base_spec
from core.manager.stages.finetune import finetune_groups
from core.manager.stages.prune import prune_groups
from core.method.schedule import run_schedule
from core.model.diffusion import create_diffusion
from core.model.unet import build_unet
from core.names import OPTIONAL_STAGES, STAGES
from core.runs import Run, create_run, register_run
from core.store import open_store
from core.training.data import load_dataset
from core.training.loop import train
from tests.conftest import run_cli

MICRO = [
    "model.model_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[16]",
    "model.num_heads=2",
    "diffusion.steps=100",
    "train.batch_size=8",
    "train.steps=4",
    "finetune.steps=2",
    "finetune.batch_size=8",
    "schedule.groups=3",
    "prune.method=magnitude",
    "prune.images=16",
    "prune.eval_images=8",
    "prune.batches=1",
    "prune.batch_size=8",
    "sample.n=4",
    "sample.steps=5",
    "eval.loss_images=16",
    "eval.fid_n=8",
    "eval.steps=3",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run folder with every stage's files, made with the stages' own functions (samples and eval.json
    stand in as files: which stage is done is a question about files)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = C.resolve("tiny", None, MICRO)
    run = create_run(cfg, "full", root)
    train(
        base_spec(run, cfg), build_unet(cfg["model"], seed=0), create_diffusion(cfg), load_dataset(cfg), progress=False
    )
    run_schedule(run)
    prune_groups(run, log=lambda s: None)
    finetune_groups(run, progress=False, log=lambda s: None)
    stages.control.train_control(run, log=lambda s: None, hooks={})
    for path in [*stages.sample.sample_paths(run).values(), run.sample_grid("side_by_side", 5)]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
    run.eval_file().write_text(json.dumps({"models": {}, "comparisons": []}))
    return root / "full"


def _rm(*names):
    def change(run: Run):
        for n in names:
            p = run.path / n
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    return change


def _touch_newer(name):
    def change(run: Run):
        t = time.time() + 5
        os.utime(run.path / name, (t, t))

    return change


def _config(key, value):
    def change(run: Run):
        cfg = json.loads((run.path / "config.json").read_text())
        section, k = key.split(".")
        cfg[section][k] = value
        (run.path / "config.json").write_text(json.dumps(cfg))

    return change


def _other_sample_steps(run: Run):
    for path in stages.sample.sample_paths(run).values():
        path.rename(path.with_name(path.name.replace("_s5_", "_s7_")))


def _partial_eval(run: Run):
    run.eval_file().write_text(json.dumps({"models": {"base": {"fid": 0.1}}}))


PIPELINE = [s for s in STAGES if s not in OPTIONAL_STAGES]  # the controls at equal inference cost are off here
LATER = [
    "schedule.json",
    "prune",
    "models/group00.pt",
    "models/group01.pt",
    "models/group02.pt",
    "models/progressive.pt",
    "models/control.pt",
    "samples",
    "eval.json",
]
STATES = {  # state -> (how to get it from the finished folder, the stages left to do)
    "finished": ([], []),
    "nothing yet": ([_rm("models", "checkpoints", *LATER)], PIPELINE),
    "base interrupted (checkpoint, no model)": ([_rm("models", *LATER)], PIPELINE),
    "base trained for fewer steps than configured": ([_config("train.steps", 5)], ["base"]),
    "base done": ([_rm(*LATER)], PIPELINE[1:]),
    "one group not pruned": ([_rm("prune/group01.json")], ["prune"]),
    "one group not fine-tuned": ([_rm("models/group01.pt")], ["finetune", "assemble", "control"]),
    "fine-tune steps raised": ([_config("finetune.steps", 3)], ["finetune"]),
    "a group model newer than the progressive model": ([_touch_newer("models/group02.pt")], ["assemble"]),
    "samples of another step count": ([_other_sample_steps], ["sample"]),
    "no control yet": ([_rm("models/control.pt")], ["control"]),
    "control switched off": ([_rm("models/control.pt"), _config("control.enabled", False)], []),
    "not evaluated": ([_rm("eval.json")], ["eval"]),
    "evaluation stopped part-way (models measured, no comparisons)": ([_partial_eval], ["eval"]),
}


@pytest.mark.parametrize("state", list(STATES))
def test_listings_and_resume_agree_on_what_is_left(state, finished, tmp_path):
    changes, left = STATES[state]
    shutil.copytree(finished, tmp_path / "full")
    run = Run(tmp_path / "full")
    for change in changes:
        change(run)
    register_run(run)
    store = open_store(tmp_path)
    to_run = [s for s in STAGES if stages.pending(run, s)]  # what resume runs
    shown = show_data(store, run)["stages"]
    assert to_run == left
    assert [s for s, v in shown.items() if v not in ("done", "skipped")] == left
    assert run_detail(store, run)["stages"] == shown
    summary = run_summary(store, store.get_run("full"))
    assert summary["stages_total"] == len(PIPELINE)
    assert summary["stages_done"] == summary["stages_total"] - len(left)


def test_resume_runs_exactly_the_stage_the_listing_shows_pending(finished, tmp_path):
    """Samples of another step count: `show` says sample is pending, and `resume` runs the sample stage alone."""
    shutil.copytree(finished, tmp_path / "full")
    run = Run(tmp_path / "full")
    _other_sample_steps(run)
    rd = ["--runs-dir", tmp_path]
    shown = json.loads(run_cli("show", "full", "--json", *rd, check=0).stdout)["stages"]
    assert [s for s, v in shown.items() if v != "done"] == ["sample"]
    run_cli("resume", "full", *rd, check=0)
    jobs = open_store(tmp_path).jobs("full")
    assert [(j["stage"], j["status"]) for j in jobs] == [("pipeline", "succeeded"), ("sample", "succeeded")]
    assert set(json.loads(run_cli("show", "full", "--json", *rd, check=0).stdout)["stages"].values()) == {"done"}


@pytest.mark.parametrize(
    "slots, batch, ranks",
    [(["cpu", "cpu"], 8, 2), (["cpu"], 8, 1), (["cpu", "cpu"], 1, 1), (["cuda:0", "cuda:1"], 8, 2)],
)
def test_stage_one_and_the_control_train_on_every_slot_when_each_rank_gets_images(tmp_path, slots, batch, ranks):
    """Whole-run training stages take every slot (DDP) when there are several and the batch has an image for
    each; group stages and the rest of the whole-run stages are one process."""
    from core.manager.pipeline import Pipeline

    cfg = C.resolve("tiny", None, [f"train.batch_size={batch}", f"finetune.batch_size={batch}"])
    run = create_run(cfg, "slots", tmp_path)
    pipe = Pipeline(run, open_store(tmp_path), slots)
    assert [pipe._ranks(s) for s in STAGES] == [ranks if s in ("base", "control") else 1 for s in STAGES]
