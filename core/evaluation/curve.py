"""FID and KID of the whole progressive model during fine-tuning (the paper's Fig. 6: quality peaks, then the
groups over-fit; the paper picked its 25k fine-tune steps from such a curve).

With ``finetune.fid_n`` > 0 every group's fine-tune keeps its EMA weights at each ``finetune.eval_every`` step
(``models/snapshots/groupNN/stepNNNNNNN.pt``). At every step that *all* non-empty groups have reached, the
progressive model is assembled from those weights and measured from ``fid_n`` samples drawn with the evaluation's
noise (the same noise at every step, so the curve's changes are the weights', not the draw's). The points go to
``metrics/fid_curve.jsonl``; a point whose snapshots and settings are unchanged is not measured again.

Picking the fine-tune step by this curve and then reporting FID on the same noise would flatter the pick: the
curve is for choosing ``finetune.steps`` of the next run, as the paper did, not for selecting weights.
"""

from __future__ import annotations

import json

from core.training.spec import snapshot_path


def curve_steps(run, sched) -> list[int]:
    """The fine-tune steps at which every non-empty group kept its weights."""
    common = None
    for g in sched.nonempty:
        folder = run.snapshots(run.group_stage(g.index))
        have = {int(p.stem[len("step") :]) for p in folder.glob("step*.pt") if p.stem[len("step") :].isdigit()}
        common = have if common is None else common & have
    return sorted(common or ())


def read_curve(run) -> list[dict]:
    """The measured points, in step order ([] when there are none)."""
    from core.runs import read_jsonl

    return sorted(read_jsonl(run.fid_curve_file()), key=lambda r: r["step"])


def _mtimes(run, sched, step: int) -> float:
    return max(snapshot_path(run.snapshots(run.group_stage(g.index)), step).stat().st_mtime for g in sched.nonempty)


def curve_todo(run, steps: list[int], sched, settings: dict) -> list[int]:
    """Of ``steps``, those still to measure: new ones, and those whose snapshots or settings changed."""
    old = {r["step"]: r for r in read_curve(run)}
    return [
        s
        for s in steps
        if s not in old or old[s].get("settings") != settings or old[s].get("mtime") != _mtimes(run, sched, s)
    ]


def update_curve(
    run, sched, sampler, settings: dict, steps: list[int], todo: list[int], device, tick, log
) -> tuple[list[dict], bool]:
    """Measure the ``todo`` steps with ``sampler`` (``evaluate.FidSampler`` at ``finetune.fid_n``) and drop points
    of steps no longer in ``steps``; the file is rewritten after each point (an interrupted evaluation keeps what it
    did). Returns (the curve, whether it changed)."""
    from core.method.artifacts import progressive_from_files

    old = read_curve(run)
    rows = {r["step"]: r for r in old if r["step"] in steps}
    changed = len(rows) != len(old)
    for step in todo:
        files = {g.index: snapshot_path(run.snapshots(run.group_stage(g.index)), step) for g in sched.nonempty}
        model = progressive_from_files(files, sched.group_of, device)
        feats = sampler.features(model, f"curve_step{step:07d}", tick)
        s = sampler.summary(feats)
        rows[step] = {
            "step": step,
            "fid": s["fid"],
            "fid_ci": s["fid_ci"],
            "kid": s["kid"],
            "kid_ci": s["kid_ci"],
            "n": len(feats),
            "settings": settings,
            "mtime": _mtimes(run, sched, step),
        }
        log(
            f"progressive model at fine-tune step {step}: FID {s['fid']:.3f} [{s['fid_ci'][0]:.3f}, "
            f"{s['fid_ci'][1]:.3f}] (n {len(feats)})"
        )
        _write(run, rows)
        changed = True
    if changed and not todo:
        _write(run, rows)
    return [rows[k] for k in sorted(rows)], changed


def _write(run, rows: dict) -> None:
    from core.runs import atomic_write_bytes

    text = "".join(json.dumps(rows[k]) + "\n" for k in sorted(rows))
    atomic_write_bytes(run.fid_curve_file(), lambda f: f.write(text.encode()))
