"""No file in a runs folder is ever run: a pickle payload planted in every kind of file a run holds is refused
or ignored by every command that opens it, and never executes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import MICRO, REPO, run_cli

pytestmark = pytest.mark.xdist_group("safe_files")  # its module fixture is built once, on one worker


class _Payload:
    """Unpickled with arbitrary globals, this runs ``touch MARKER`` (os.system), as the attack did."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A finished micro run (base, groups, progressive, control, eval arrays), then a payload in each of its
    model, checkpoint and eval files and in the cached domain feature net."""
    root = tmp_path_factory.mktemp("poison")
    rd, cache, marker = root / "runs", root / "cache", root / "MARKER"
    env = {"STEPADAPT_CACHE": str(cache)}
    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "p",
        *MICRO,
        "-S",
        "train.steps=6",
        "-S",
        "finetune.steps=2",
        "-S",
        "schedule.groups=2",
        "-S",
        "prune.rounds=1",
        "-S",
        "eval.fid_n=32",
        "-S",
        "eval.loss_images=16",
        "-S",
        "eval.steps=5",
        "-S",
        "sample.n=4",
        "-S",
        "sample.steps=5",
        "--runs-dir",
        rd,
        env=env,
        check=0,
    )
    run = rd / "p"
    planted = []
    for path in [*(run / "models").glob("*.pt"), *(run / "checkpoints").glob("*.pt"), *cache.rglob("domain-*.pt")]:
        torch.save({"step": 6, "arch": {}, "state": {}, "kind": "progressive", "x": _Payload(marker)}, path)
        planted.append(path)
    for path in (run / "eval").glob("*.npy"):
        np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
        planted.append(path)
    kinds = {p.parent.name + "/" + p.name.split("-")[0] for p in planted}
    assert {
        "models/base.pt",
        "models/group00.pt",
        "models/progressive.pt",
        "models/control.pt",
        "checkpoints/base.pt",
        "checkpoints/control.pt",
        "features/domain",
        "eval/features",
    } <= kinds, kinds
    study = rd / "studies" / "s"
    study.mkdir(parents=True)
    (study / "study.json").write_text(
        json.dumps(
            {
                "id": "s",
                "study": "table3",
                "definition": {
                    "title": "t",
                    "arms": [{"name": "a"}],
                    "rows": [{"label": "a", "arm": "a", "model": "progressive"}],
                },
                "preset": "tiny",
                "overrides": [],
                "base": "p",
                "base_given": True,
                "arms": {"a": "p"},
                "created": "2026-12-06T00:00:00",
            }
        )
    )
    return rd, env, marker


COMMANDS = [
    ["runs"],
    ["show", "p"],
    ["compare", "p"],
    ["sample", "p", "--model", "progressive", "--samples", "2", "--sample-steps", "2"],
    ["eval", "p", "--samples", "16", "--sample-steps", "2"],
    ["fork", "p", "q"],
    ["resume", "p"],
    ["train", "--name", "p", "--resume", "--train-steps", "8"],
    ["report", "p"],
    ["study", "show", "s"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_a_planted_pickle_never_runs_and_is_refused_in_one_line(poisoned, args):
    rd, env, marker = poisoned
    p = run_cli(*args, "--runs-dir", rd, env=env, timeout=300)
    assert not marker.exists(), f"{args}: the payload ran\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stdout + p.stderr and "internal error" not in p.stderr, p.stderr
    if p.returncode != 0:  # refused: one error line (after any progress lines), exit 2
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and p.stderr.strip().endswith(errors[0]), p.stderr


def test_the_tuis_views_load_a_poisoned_run_without_running_it(poisoned):
    rd, env, marker = poisoned
    code = (
        "import sys; from pathlib import Path; from core.store import Store; "
        "from stepadapt_cli.tui.data import read_view; rd = Path(sys.argv[1]); s = Store(rd / 'stepadapt.db'); "
        "[read_view(s, rd, k) for k in (('runs',), ('run', 'p'), ('proxy', 'p'))]; print('ok')"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(rd)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    assert not marker.exists()


def test_the_listing_reader_resolves_no_global_of_the_files_choosing(tmp_path):
    from core.method.fields import artifact_fields, artifact_step

    marker = tmp_path / "MARKER"
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"step": 7, "arch": {"a": 1}, "state": torch.nn.Linear(2, 2).state_dict()}, good)
    torch.save({"step": 7, "x": _Payload(marker)}, bad)
    assert artifact_step(good) == 7 and artifact_fields(good)["arch"] == {"a": 1}
    assert artifact_fields(bad) == {} and artifact_step(bad) is None
    assert not marker.exists()


def test_a_refused_file_says_so_in_one_line(tmp_path):
    from core.errors import UserError
    from core.runs import load_torch

    marker = tmp_path / "MARKER"
    path = tmp_path / "m.pt"
    torch.save({"x": _Payload(marker)}, path)
    with pytest.raises(UserError) as e:
        load_torch(path, "model")
    assert (
        str(e.value) == f"{path} holds Python objects other than tensors and plain data; refused (files in a "
        "runs folder are data, never run)"
    )
    assert not marker.exists()


def test_a_poisoned_cached_feature_net_is_replaced_by_the_shipped_one(tmp_path, monkeypatch):
    from core.config import preset
    from core.evaluation.features import SHIPPED_NETS, dataset_key, domain_extractor
    from core.training.data import load_dataset

    monkeypatch.setenv("STEPADAPT_CACHE", str(tmp_path / "cache"))
    cfg = preset("tiny")
    data = load_dataset(cfg)
    marker = tmp_path / "MARKER"
    path = tmp_path / "cache" / "features" / f"domain-{dataset_key(data, cfg)}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"channels": 1, "x": _Payload(marker)}, path)
    said = []
    net, info = domain_extractor(data, cfg, tmp_path, log=said.append)
    assert not marker.exists() and info["cached"]
    assert path.read_bytes() == (SHIPPED_NETS / path.name).read_bytes()
    assert any("holds Python objects" in s for s in said) and any("shipped" in s for s in said), said
