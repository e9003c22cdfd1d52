"""Studies: the paper's experiments (or a user's own) as sets of runs on one shared base, with a table beside the
paper's numbers.

A study's definition is data: ``studies/NAME.yaml`` (the project's; a path to any YAML file works too):

    title: one line                      note: what differs from the paper, said plainly
    paper_columns: [names of the paper's columns]
    common: {key: value}                 overrides every arm gets (optional)
    base:   {key: value}                 overrides of the study's own base run (optional; e.g. a long stage 1
                                         with milestones: train.steps, train.keep)
    arms:   [{name: ARM, set: {key: value}, at: STEP, seeds: [0, 1, 2]}]  one run per arm, each a fork of the base
                                         (``at``: of the base's milestone STEP, one of its train.keep;
                                         ``seeds``: one run per training seed, ARM-s0 ..., and the arm's
                                         rows aggregate them: mean and a t-interval over seeds)
    rows:   [{label, arm, model: base|control|progressive, paper: [values, one per paper column]}]
    plot:   fid_macs                     (optional)

Running a study (``stepadapt study NAME``) makes (or reuses) one base run ``ID-base`` (or ``--base RUN``), trains
its stage 1 once, forks one run per arm (``ID-ARM``) and runs the arms' pipelines, as many at a time as there are
device slots. Its record, ``RUNS_DIR/studies/ID/study.json``, names every run, so ``study resume ID`` continues
exactly the runs that have not finished and ``study show`` / ``study report`` read the results from the runs'
``eval.json``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Optional

from core.errors import StageFailed, UserError
from core.evaluation.gaps import crossover, gap_points, over_seeds
from core.names import SAMPLE_MODELS
from core.resources import studies_dir
from core.runs import Run, atomic_write_json, is_run_folder, open_run, read_json, runs_root

STUDIES_DIR = studies_dir()  # the shipped definitions (core/resources.py)
MAX_ARMS = 64  # a study makes one run per arm: a file with thousands makes thousands of forks
INTERNAL_ARM_KEYS = ("seed_of",)  # written by expand_seeds, not by a user
KEYS = {
    "definition": ("name", "title", "note", "paper_columns", "common", "base", "arms", "rows", "plot"),
    "arm": ("name", "set", "after", "at", "seeds"),
    "row": ("label", "arm", "model", "paper"),
}
NAME, NAME_MAX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*"), 96  # a part of a run's name: no '/', no leading '.'


def definitions() -> dict[str, Path]:
    """The project's study definitions by name."""
    return {p.stem: p for p in sorted(STUDIES_DIR.glob("*.yaml"))}


def load_definition(name_or_path: str) -> dict:
    """A study definition, checked: one line for what is wrong with it."""
    from core.config import load_file

    path = definitions().get(name_or_path) or Path(name_or_path).expanduser()
    if not path.is_file():
        raise UserError(
            f"unknown study {name_or_path!r}; choose one of: {', '.join(definitions())} (or give a study file)"
        )
    d = load_file(path)
    where = f"study {path}"
    if not isinstance(d, dict):
        raise UserError(f"{where}: not a table of title, arms, rows")
    check_keys(d, "definition", where)
    for key in ("title", "arms", "rows"):
        if key not in d:
            raise UserError(f"{where}: no {key!r}")
    for key in ("common", "base"):
        if not isinstance(d.get(key) or {}, dict):
            raise UserError(f"{where}: {key!r} must be a table of settings")
    names = _check_arms(d["arms"], where)
    arms = expand_seeds(d["arms"], where)
    _check_arms(arms, where)  # the runs the seeds make: their count and names
    _check_rows(d, names + [a["name"] for a in arms], where)
    return {**d, "arms": arms, "name": d.get("name") or path.stem, "path": str(path)}


def expand_seeds(arms: list[dict], where: str) -> list[dict]:
    """An arm with ``seeds: [s, ...]`` as one arm per training seed (``ARM-sS``, with ``seed: S`` set and
    ``seed_of: ARM``); the others as they are. A row of ARM aggregates its seeds (``results``)."""
    out = []
    for a in arms:
        seeds = a.get("seeds")
        if seeds is None:
            out.append(a)
            continue
        if (
            not isinstance(seeds, list)
            or len(seeds) < 2
            or len(set(seeds)) != len(seeds)
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)
        ):
            raise UserError(f"{where}: arm {a['name']!r}: 'seeds' must list at least 2 different seeds (integers >= 0)")
        if a.get("after") is not None:
            raise UserError(f"{where}: arm {a['name']!r}: an arm with seeds cannot wait for another ('after')")
        rest = {k: v for k, v in a.items() if k != "seeds"}
        out += [
            {**rest, "name": f"{a['name']}-s{x}", "set": {**(a.get("set") or {}), "seed": x}, "seed_of": a["name"]}
            for x in seeds
        ]
    return out


def _check_arms(arms, where: str) -> list[str]:
    """A definition's arms checked before anything is written (their count, keys, names, settings, order);
    returns their names."""
    if not isinstance(arms, list) or not arms or not all(isinstance(a, dict) and a.get("name") for a in arms):
        raise UserError(f"{where}: 'arms' must be a list of {{name, set}}")
    if len(arms) > MAX_ARMS:
        raise UserError(f"{where}: {len(arms)} arms asked for, at most {MAX_ARMS} (one run each)")
    for a in arms:
        check_keys(a, "arm", f"{where}: arm {str(a['name'])[:60]!r}")
        check_name(a["name"], f"{where}: arm name")
        if not isinstance(a.get("set") or {}, dict):
            raise UserError(f"{where}: arm {a['name']!r}: 'set' must be a table of settings")
        if a.get("at") is not None and (not isinstance(a["at"], int) or isinstance(a["at"], bool) or a["at"] < 1):
            raise UserError(f"{where}: arm {a['name']!r}: 'at' must be a step number (a milestone of the base)")
    names = [a["name"] for a in arms]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: arm names repeat")
    for i, a in enumerate(arms):
        if a.get("after") is not None and (a["after"] not in names or names.index(a["after"]) >= i):
            raise UserError(f"{where}: arm {a['name']!r} comes after {a['after']!r}, which must be an earlier arm")
    return names


def _check_rows(d: dict, names: list[str], where: str) -> None:
    """A definition's rows: each a known arm's model, with one paper value per paper column."""
    cols = d.get("paper_columns") or []
    if not isinstance(d["rows"], list):
        raise UserError(f"{where}: 'rows' must be a list of {{label, arm, model, paper}}")
    for r in d["rows"]:
        if isinstance(r, dict):
            check_keys(r, "row", f"{where}: row {str(r.get('label'))[:60]!r}")
        if not isinstance(r, dict) or r.get("arm") not in names or r.get("model") not in SAMPLE_MODELS:
            raise UserError(
                f"{where}: a row needs label, an arm of {names} and a model of {list(SAMPLE_MODELS)}: {str(r)[:200]}"
            )
        if r.get("paper") is not None and (not isinstance(r["paper"], list) or len(r["paper"]) != len(cols)):
            raise UserError(
                f"{where}: row {r.get('label')!r} needs a list of {len(cols)} paper values, one per paper_columns"
            )


def check_keys(d: dict, what: str, where: str) -> None:
    """Every key of ``d`` (a definition, an arm or a row) is one ``what`` has; else one line with the closest."""
    for key in d:
        if key not in KEYS[what] and not (what == "arm" and key in INTERNAL_ARM_KEYS):
            close = difflib.get_close_matches(str(key), KEYS[what], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(KEYS[what])}"
            raise UserError(f"{where}: unknown key {str(key)[:60]!r}{hint}")


def check_name(name, what: str) -> str:
    """``name`` (an arm's, a study id) as a part of run names: letters, digits, '-', '_', '.', not starting with
    '.', at most ``NAME_MAX`` characters (ID-ARM stays a valid run name); else one line."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > NAME_MAX:
        raise UserError(
            f"{what} {str(name)[:60]!r} is not a plain name (letters, digits, '-', '_', '.'; not "
            f"starting with '.'; at most {NAME_MAX} characters)"
        )
    return name


def base_overrides(defn: dict) -> list[str]:
    """The -S overrides of the study's own base run (its ``base`` table)."""
    return [f"{k}={json.dumps(v)}" for k, v in (defn.get("base") or {}).items()]


def arm_at(rec: dict, arm: dict) -> Optional[int]:
    """The milestone step an arm starts from: its own ``at``, or the study's ``--base RUN@STEP``; None for the
    base's final weights."""
    return arm.get("at") if arm.get("at") is not None else rec.get("base_at")


def arm_base(rec: dict, arm: dict) -> str:
    """What an arm forks: the study's base, or a milestone of it (the arm's ``at``, or ``--base RUN@STEP``)."""
    at = arm_at(rec, arm)
    return rec["base"] if at is None else f"{rec['base']}@{at}"


def arm_overrides(defn: dict, arm: dict, study_id: str = "ID") -> list[str]:
    """The -S overrides of one arm: the study's ``common`` ones, then the arm's own; ``{id}`` in a value is the
    study's id (e.g. ``prune.scratch_from: "{id}-proxy"``, another arm's run)."""
    items = {**(defn.get("common") or {}), **(arm.get("set") or {})}
    fill = lambda v: v.replace("{id}", study_id) if isinstance(v, str) else v
    return [f"{k}={json.dumps(fill(v))}" for k, v in items.items()]


# -- the record ------------------------------------------------------------------------------------------------
def study_dir(runs_dir, study_id: str) -> Path:
    return runs_root(runs_dir) / "studies" / study_id


def load_record(runs_dir, study_id: str) -> dict:
    rec = read_json(study_dir(runs_dir, study_id) / "study.json")
    if not isinstance(rec, dict):
        started = sorted(p.name for p in (runs_root(runs_dir) / "studies").glob("*") if (p / "study.json").is_file())
        raise UserError(f"study not found: {study_id!r}" + (f" (started: {', '.join(started)})" if started else ""))
    return rec


def list_records(runs_dir) -> list[dict]:
    root = runs_root(runs_dir) / "studies"
    return [r for r in (read_json(p / "study.json") for p in sorted(root.glob("*"))) if isinstance(r, dict)]


def create_study(
    defn: dict, study_id: Optional[str], preset: Optional[str], base: Optional[str], overrides: list[str], runs_dir
) -> dict:
    """The study's record (written once; the runs are made when it runs). A study of the same id continues."""
    from core import config as C

    preset = preset or "tiny"
    study_id = check_name(study_id or f"{defn['name']}-{preset}", "study name")
    for arm in defn["arms"]:  # a definition made elsewhere than load_definition: checked here too
        check_name(arm["name"], "arm name")
    folder = study_dir(runs_dir, study_id)
    if (folder / "study.json").exists():
        raise UserError(f"study {study_id} exists; continue it with: stepadapt study resume {study_id}")
    base_at = None
    from core.manager.shipped import import_shipped, shipped_name

    shipped = shipped_name(base, preset) if base is not None else None
    if shipped is not None:  # the package's own trained base, imported once as the study's base run
        if any(arm.get("at") is not None for arm in defn["arms"]):
            raise UserError("the study's arms fork milestones of their own ('at'); the shipped base keeps none")
        base_name = f"{study_id}-base"
        if not is_run_folder(runs_root(runs_dir) / base_name):
            import_shipped(shipped, overrides, base_name, runs_dir, log=lambda line: None)
    elif base is not None:  # a run's finished stage 1, or a milestone of it (RUN@STEP)
        from core.manager.bases import check_milestone, check_parent_base, split_milestone

        base, base_at = split_milestone(base)
        parent = open_run(base, runs_dir)
        if base_at is None:
            check_parent_base(parent)
        else:
            check_milestone(parent, base_at)
        if any(arm.get("at") is not None for arm in defn["arms"]) and base_at is not None:
            raise UserError("the study's arms fork milestones of their own ('at'); give --base RUN, not RUN@STEP")
        base_name = parent.name
    else:
        base_cfg = C.resolve(preset, None, [*base_overrides(defn), *overrides])  # bad ones fail before any write
        kept = set(base_cfg["train"]["keep"])
        for arm in defn["arms"]:
            if arm.get("at") is not None and arm["at"] not in kept:
                raise UserError(
                    f"arm {arm['name']!r} forks milestone {arm['at']}, which the base does not keep "
                    f"(train.keep: {', '.join(map(str, sorted(kept))) or 'none'})"
                )
        base_name = f"{study_id}-base"
    for arm in defn["arms"]:
        C.apply_overrides(C.resolve(preset, None, overrides), arm_overrides(defn, arm, study_id))
    rec = {
        "id": study_id,
        "study": defn["name"],
        "definition": defn,
        "preset": preset,
        "overrides": overrides,
        "base": base_name,
        "base_given": base is not None,
        "base_at": base_at,
        "arms": {a["name"]: f"{study_id}-{a['name']}" for a in defn["arms"]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(rec, folder / "study.json")
    return rec


# -- running ---------------------------------------------------------------------------------------------------
def _status(store, name: str) -> Optional[str]:
    row = store.get_run(name)
    return row["status"] if row else None


def _base_run(rec: dict, runs_dir) -> Run:
    """The study's base run, created here unless it was given."""
    from core import config as C
    from core.runs import create_run

    path = runs_root(runs_dir) / rec["base"]
    if not is_run_folder(path):
        if rec["base_given"]:
            raise UserError(f"the study's base run {rec['base']} is gone")
        create_run(
            C.resolve(rec["preset"], None, [*base_overrides(rec["definition"]), *rec["overrides"]]),
            rec["base"],
            runs_dir,
        )
    return open_run(rec["base"], runs_dir)


def base_pending(rec: dict, run: Run) -> bool:
    """Whether the study's shared stage 1 still has to train (never for a milestone given as its base)."""
    from core.manager import stages

    return rec.get("base_at") is None and bool(stages.pending(run, "base"))


def ensure_base(rec: dict, store, slots: list[str], runs_dir, log: Callable[[str], None]) -> Run:
    """The study's base run with a finished stage 1 (created and trained here, in this process, unless it was
    given)."""
    from core.manager.pipeline import Pipeline
    from core.runs import run_lock

    run = _base_run(rec, runs_dir)
    if base_pending(rec, run):
        log(f"study {rec['id']}: training the shared stage 1 ({run.name}) once")
        with run_lock(run, "the study's stage 1", wait=10.0):
            Pipeline(run, store, slots[:1], log=log, stages=("base",)).execute()
    return run


def arm_run(rec: dict, arm: dict, runs_dir, log: Callable[[str], None]) -> Run:
    """An arm's run, forked from the base (or its milestone) where it does not exist yet."""
    from core.manager.bases import fork_run

    name = rec["arms"][arm["name"]]
    if is_run_folder(runs_root(runs_dir) / name):
        return open_run(name, runs_dir)
    defn = rec["definition"]
    return fork_run(arm_base(rec, arm), name, [*rec["overrides"], *arm_overrides(defn, arm, rec["id"])], runs_dir, log)


def _forkable(rec: dict, arm: dict, base: Run, base_busy: bool) -> bool:
    """Whether an arm's starting point exists: its milestone kept (the base may still be training on), or the
    base's finished stage 1."""
    at = arm_at(rec, arm)
    if at is not None:
        from core.training.spec import milestone_paths

        model, state = milestone_paths(base.milestones(), at)
        return model.is_file() and state.is_file()
    return not base_busy and not base_pending(rec, base)


def run_study(
    rec: dict, store, slots: list[str], runs_dir, grace: float = 10.0, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Train the base once, then every unfinished arm's pipeline, one per device slot at a time; returns each
    arm run's final status. A failed arm does not stop the others. With more than one slot and arms that fork
    milestones (``at``), the base trains on as a background job on one slot while the arms whose milestone it
    has kept run on the others."""
    from core.manager.jobs import job_alive, reconcile
    from core.manager.pipeline import start_detached

    defn = rec["definition"]
    base = _base_run(rec, runs_dir)
    free, active = list(slots), {}  # active: job id -> (run, its slots, the arm or None for the base)
    early = len(slots) > 1 and any(a.get("at") is not None for a in defn["arms"])
    if base_pending(rec, base) and early:
        mine, free = free[:1], free[1:]
        job_id, pid = start_detached(base, store, mine, grace, cores=_cores(mine, slots), stages=("base",))
        active[job_id] = (base, mine, None)
        log(
            f"study {rec['id']}: training the shared stage 1 ({base.name}) on {mine[0]} (job {job_id}, pid {pid}); "
            "arms start as their milestones are kept"
        )
    else:
        ensure_base(rec, store, slots, runs_dir, log)
    names = {a["name"]: rec["arms"][a["name"]] for a in defn["arms"]}
    after = {names[a["name"]]: names[a["after"]] for a in defn["arms"] if a.get("after")}
    todo = [a for a in defn["arms"] if _status(store, names[a["name"]]) != "succeeded"]

    def base_busy() -> bool:
        return any(arm is None for _, _, arm in active.values())

    def ready(arm):  # its starting point exists, and an arm that needs another's result waits for its success
        name = names[arm["name"]]
        return _forkable(rec, arm, base, base_busy()) and (
            name not in after or _status(store, after[name]) == "succeeded"
        )

    while todo or active:
        if not active and todo and not any(ready(a) for a in todo):
            waiting = sorted({after[names[a["name"]]] for a in todo if names[a["name"]] in after})
            log(
                f"study {rec['id']}: {', '.join(names[a['name']] for a in todo)} cannot start"
                + (f" (waiting for {', '.join(waiting)}, which did not succeed)" if waiting else "")
            )
            break
        while free and any(ready(a) for a in todo):
            arm = next(a for a in todo if ready(a))
            todo.remove(arm)
            run = arm_run(rec, arm, runs_dir, log)
            share = max(1, len(free) // sum(1 for a in [arm, *todo] if ready(a)))  # fewer arms than slots: more each
            mine, free = free[:share], free[share:]
            job_id, pid = start_detached(run, store, mine, grace, cores=_cores(mine, slots))
            active[job_id] = (run, mine, arm)
            log(f"study {rec['id']}: {run.name} started on {', '.join(mine)} (job {job_id}, pid {pid})")
        time.sleep(0.5)
        for job_id, (run, mine, arm) in list(active.items()):
            job = store.job(job_id)
            if job["status"] in ("queued", "running") and not job_alive(job):
                reconcile(store)
                job = store.job(job_id)
            if job["status"] in ("queued", "running"):
                continue
            del active[job_id]
            free.extend(mine)
            log(f"study {rec['id']}: {run.name} {job['status']}" + (" (the shared stage 1)" if arm is None else ""))
            if arm is None and job["status"] != "succeeded":
                raise StageFailed(
                    f"study {rec['id']}: the shared stage 1 ({run.name}) {job['status']}; continue with "
                    f"stepadapt study resume {rec['id']}"
                )
    return {names[a["name"]]: _status(store, names[a["name"]]) for a in defn["arms"]}


def _cores(mine: list[str], slots: list[str]) -> Optional[int]:
    """An arm's part of the CPU cores: arms side by side on CPU slots split the machine, as a run's group jobs do.
    None for an arm with every slot, which runs as a lone run does (its threads as the environment says)."""
    if not mine or mine[0] != "cpu" or len(mine) == len(slots):
        return None
    return max(1, (os.cpu_count() or 1) * len(mine) // len(slots))


def stop_study(rec: dict, store, grace: float, log=print) -> None:
    from core.manager.pipeline import stop_run

    for name in [rec["base"], *rec["arms"].values()]:  # the base: its stage 1 may be training beside the arms
        if _status(store, name) == "running":
            stop_run(store, name, grace, log=log)


def finished_or_raise(rec: dict, statuses: dict[str, str]) -> None:
    bad = {n: s for n, s in statuses.items() if s != "succeeded"}
    if bad:
        raise StageFailed(
            f"study {rec['id']}: {', '.join(f'{n} {s}' for n, s in bad.items())}; continue with "
            f"stepadapt study resume {rec['id']}"
        )


# -- results ---------------------------------------------------------------------------------------------------
def results(rec: dict, runs_dir) -> dict:
    """The study's table: one row per definition row, ours (from the arm's eval.json) beside the paper's."""
    from core.evaluation.evaluate import load_eval

    defn = rec["definition"]
    evals = {}  # one read of each arm's eval.json (several rows may come from one arm)
    for name in rec["arms"].values():
        path = runs_root(runs_dir) / name
        evals[name] = load_eval(Run(path)) if is_run_folder(path) else {}
    rows = []
    for r in defn["rows"]:
        seeded = [a["name"] for a in defn["arms"] if a.get("seed_of") == r["arm"]]
        if seeded:  # an arm with several training seeds: one row over all of them
            rows.append(_seed_row(r, [rec["arms"][a] for a in seeded], evals, defn))
            continue
        name = rec["arms"][r["arm"]]
        ev = evals[name]
        m = ev.get("models", {}).get(r["model"], {})
        base_macs = ev.get("models", {}).get("base", {}).get("macs")
        rows.append(
            {
                "label": r["label"],
                "run": name,
                "model": r["model"],
                **{
                    k: m.get(k)
                    for k in (
                        "fid",
                        "fid_ci",
                        "kid",
                        "kid_ci",
                        "macs",
                        "params",
                        "loss",
                        "loss_ci",
                        "train_steps",
                        "fid_kind",
                        "fid_n",
                    )
                },
                "macs_ratio": m["macs"] / base_macs if m.get("macs") and base_macs else None,
                "paper": dict(zip(defn.get("paper_columns") or [], r.get("paper") or [])),
            }
        )
    return {
        "id": rec["id"],
        "study": rec["study"],
        "title": defn["title"],
        "note": defn.get("note", ""),
        "preset": rec["preset"],
        "base": rec["base"],
        "paper_columns": defn.get("paper_columns") or [],
        "arms": rec["arms"],
        "rows": rows,
        **_gaps(defn, rec["arms"], evals),
    }


def _gaps(defn: dict, names: dict, evals: dict) -> dict:
    """The progressive model's gap to each control by base steps, and the crossover per series
    (``core/evaluation/gaps.py``); nothing for a study whose arms all fork one base."""
    points = gap_points(defn["arms"], names, evals)
    if len({p["base_steps"] for p in points}) < 2:
        return {"gaps": points, "crossover": {}}
    return {"gaps": points, "crossover": crossover(points)}


SEEDED = ("fid", "kid", "loss")


def _seed_row(r: dict, names: list[str], evals: dict, defn: dict) -> dict:
    """A row over several seeds' runs: each measure's mean with its t-interval over seeds (``fid_ci``), its
    standard deviation (``fid_sd``), every seed's value (``fid_seeds``) and the mean of the seeds' own bootstrap
    intervals (``fid_boot_ci``: sampling noise alone, for comparison)."""
    ms = [evals[n].get("models", {}).get(r["model"], {}) for n in names]
    row = {"label": r["label"], "run": ", ".join(names), "model": r["model"], "seeds": len(names)}
    for key in SEEDED:
        vals = [m.get(key) for m in ms]
        if any(v is None for v in vals):
            row.update({key: None, f"{key}_ci": None})
            continue
        agg = over_seeds(vals)
        boots = [m.get(f"{key}_ci") for m in ms]
        row.update(
            {
                key: agg["mean"],
                f"{key}_ci": agg["ci"],
                f"{key}_sd": agg["sd"],
                f"{key}_seeds": vals,
                f"{key}_boot_ci": (
                    [sum(b[0] for b in boots) / len(boots), sum(b[1] for b in boots) / len(boots)]
                    if all(boots)
                    else None
                ),
            }
        )
    first = ms[0]
    base_macs = evals[names[0]].get("models", {}).get("base", {}).get("macs")
    row.update({k: first.get(k) for k in ("macs", "params", "train_steps", "fid_kind", "fid_n")})
    row["macs_ratio"] = first["macs"] / base_macs if first.get("macs") and base_macs else None
    row["paper"] = dict(zip(defn.get("paper_columns") or [], r.get("paper") or []))
    return row
