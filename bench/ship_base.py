"""Write the shipped base (``core/bases/NAME/``) from a run whose stage 1 is finished and evaluated.

The run is a base trained by this repository (``make base`` trains one from scratch; a fork of a milestone,
``stepadapt fork BASE@STEP NEW``, serves as well). Its base must be evaluated first
(``stepadapt eval RUN --model base``: FID/KID with intervals at n = 1024 and the held-out loss per group), so the
provenance carries those figures. The weights are written in ``--dtype``: bfloat16 halves the file, and is used only
when ``--check`` shows the same numbers (the fixed-batch loss within 1% and the FID inside the fp32 interval is
what the test asks; this script prints both).

    python bench/ship_base.py --run tiny-base [--runs-dir runs] [--name tiny] [--dtype float32] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.manager import shipped  # noqa: E402
from core.method.artifacts import load_unet, read_artifact  # noqa: E402
from core.runs import file_sha256, open_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--name", default="tiny")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--note", default="", help="A sentence on what this base is (kept in the provenance).")
    a = ap.parse_args()
    run = open_run(a.run, a.runs_dir)
    evaluation = json.loads((run.path / "eval.json").read_text())
    base_eval = evaluation["models"]["base"]
    art = read_artifact(run.model("base"))
    cfg = run.config
    model = load_unet(run.model("base"))
    origin = run.meta.get("base") or {}
    # a fork of a milestone: the weights were made by the parent's stage 1 (`stepadapt train` with train.keep), the
    # same weights as a run of that many steps alone (tests/test_bases.py)
    maker = open_run(origin["run"], a.runs_dir).meta if origin.get("origin") == "fork" else run.meta
    command = [Path(maker["command"][0]).name, *maker["command"][1:]] if maker.get("command") else []
    prov = {
        "preset": cfg["preset"],
        "note": a.note,
        "command": " ".join(command),
        "made_by": f"run {run.name}"
        + (f", a fork of {origin['run']}@{origin['step']} (its milestone)" if origin.get("step") else ""),
        "config": {s: cfg[s] for s in shipped.STAGE1_SECTIONS},
        "config_hash": run.meta.get("config_hash"),
        "stage1_hash": shipped.stage1_hash(cfg),
        "commit": maker.get("git_sha"),
        "seed": cfg["seed"],
        "steps": int(art["step"]),
        "arch": art["arch"],
        "params": sum(p.numel() for p in model.parameters()),
        "source_sha256": file_sha256(run.model("base")),
        "eval": {
            "fid": base_eval["fid"],
            "fid_ci": base_eval["fid_ci"],
            "kid": base_eval["kid"],
            "kid_ci": base_eval["kid_ci"],
            "n": base_eval["fid_n"],
            "sample_steps": base_eval["fid_steps"],
            "kind": base_eval["fid_kind"],
            "extractor": base_eval["fid_extractor"],
        },
        "held_out_loss": base_eval.get("loss_groups"),
        "held_out_groups": (base_eval.get("settings") or {}).get("schedule"),
    }
    check = {"images": 64, "seed": 0}
    check["loss"] = shipped.fixed_batch_loss(model, cfg, check["images"], check["seed"])
    folder = shipped.write(a.name, art["state"], {**prov, "check": check}, a.dtype)
    _, state, written = shipped.load(a.name)
    again = shipped.fixed_batch_loss(load_unet_from(written["arch"], state), cfg, check["images"], check["seed"])
    print(
        f"{folder}: {written['bytes'] / 1e6:.2f} MB {a.dtype}, {written['params']:,} params, {written['steps']:,} "
        f"steps, FID {prov['eval']['fid']:.3f} {prov['eval']['fid_ci']}, fixed-batch loss {check['loss']:.5f} "
        f"(as written: {again:.5f}, {100 * abs(again - check['loss']) / check['loss']:.3f}% apart)"
    )


def load_unet_from(arch: dict, state: dict):
    from core.method.prune import build_pruned

    return build_pruned(arch, None, state).eval()


if __name__ == "__main__":
    main()
