"""Run folders: where a run's config, checkpoints, models, metrics and samples live. Every path of a run
is a ``Run`` method; nothing else spells a run's file names.

    RUNS_DIR/NAME/
        config.json        resolved config (what every stage of the run uses)
        meta.json          config hash, seed, git sha/dirty, created, stepadapt version, command line
        schedule.json/png  the SNR schedule and its timestep groups
        checkpoints/       resumable training state per training stage (base.pt, group03.pt, ...)
        models/            EMA weights for use (base.pt, group03.pt, ..., progressive.pt)
        milestones/        stage 1 kept at train.keep's steps: EMA weights (step0001500.pt) and state (.state.pt)
        metrics/           one JSON line per logged step (base.jsonl, group03.jsonl, ...)
        prune/             one record per pruned group (group03.json: plan and report)
        samples/           sample grids (PNG)
        eval.json          evaluation (FID, MACs, params, held-out losses)
        report/            index.html and report.md
        logs/              one log per job (0007-finetune-g03.log)

The runs directory is ``--runs-dir``, else ``$STEPADAPT_HOME``, else ``./runs``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from core.config import config_hash
from core.errors import UserError

CONFIG_FILE = "config.json"  # a run's resolved config; its presence makes a folder a run folder
META_FILE = "meta.json"  # a run's config hash, seed, git state, creation time, command line


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a run (its config file)."""
    return (Path(path) / CONFIG_FILE).is_file()


def runs_root(runs_dir: Optional[str] = None) -> Path:
    return Path(runs_dir or os.environ.get("STEPADAPT_HOME") or "runs").expanduser()


def _git_state() -> dict:
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if sha.returncode == 0:
            return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_sha": None, "git_dirty": None}


def _disk_error(e: OSError, what: Path) -> UserError:
    if e.errno == errno.ENOSPC:
        return UserError(f"no space left on device while writing {what}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {what}: permission denied")
    return UserError(f"cannot write {what}: {e.strerror or e}")


@contextlib.contextmanager
def writing_in(folder: Path):
    """Writes into ``folder`` whose ``OSError`` (a full disk, a read-only folder) becomes one line naming the file."""
    try:
        yield
    except OSError as e:  # ENOSPC, EROFS, EACCES...: the writes stop here, and the user reads why in one line
        raise _disk_error(e, Path(e.filename) if e.filename else Path(folder)) from None


def atomic_write_bytes(path: Path, write) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: a reader sees the old or the new file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _disk_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _disk_error(e, path) from None
        raise UserError(f"cannot write {path}: {e} (is the disk full?); the previous file is intact") from None


def sweep_partial_writes(path: Path) -> list[Path]:
    """Remove what an ``atomic_write_bytes`` of ``path`` left behind when its process was killed mid-write
    (``.NAME.XXXX.tmp`` beside it); returns what was removed."""
    path = Path(path)
    gone = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
        gone.append(tmp)
    return gone


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (checkpoints can be large)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> Optional[Any]:
    """A JSON file's content, or None when it is missing or unreadable (a reader never fails on a run file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file ([] when it is missing); a garbled line is skipped."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Tensors and plain data (dicts, lists, tuples, strings, numbers, None) only: what ``load_torch`` reads."""
    import torch  # only where tensors are written: listing runs stays torch-free

    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def load_torch(path: Path, what: str = "file", device: Any = "cpu") -> Any:
    """A file written by ``atomic_torch_save``, read with torch's weights-only unpickler: tensors and plain data
    only; a file that names any other Python object (a class, a function: ``os.system``) is refused before
    anything in it is imported or called. A runs folder is shared data, so nothing in it is ever run
    (docs/runs.md, "Files are data"). Missing, unreadable or refused files are one-line ``UserError``s."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" in text or "Unsupported operand" in text or "weights_only" in text:
            raise UserError(
                f"{path} holds Python objects other than tensors and plain data; refused (files in a "
                "runs folder are data, never run)"
            ) from None
        raise UserError(f"cannot read {what} {path}: {_first_line(text)}") from None
    except (
        EOFError,
        zipfile.BadZipFile,
        RuntimeError,
        ValueError,
        AttributeError,
        ImportError,
        TypeError,
        KeyError,
        IndexError,
    ) as e:  # what torch.load raises on a truncated, foreign or corrupt file
        raise UserError(
            f"cannot read {what} {path} (truncated or not a stepadapt file): {type(e).__name__}: {_first_line(str(e))}"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


class Run:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        """The resolved config (a copy to change freely); read again only when ``config.json`` changed, so the
        listings' many questions about one run parse it once."""
        import copy

        from core.config import complete

        path = self.config_file
        stamp = path.stat().st_mtime_ns
        if getattr(self, "_config_stamp", None) != stamp:
            self._config, self._config_stamp = complete(json.loads(path.read_text())), stamp
        return copy.deepcopy(self._config)

    @property
    def meta(self) -> dict:
        return json.loads(self.meta_file.read_text())

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def meta_file(self) -> Path:
        return self.path / META_FILE

    @staticmethod
    def group_stage(g: int) -> str:
        """The training stage name of timestep group ``g``: its checkpoint, model and metrics file name."""
        return f"group{g:02d}"

    def ckpt(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}.pt"

    def model(self, stage: str) -> Path:
        return self.path / "models" / f"{stage}.pt"

    def milestones(self) -> Path:
        """Stage 1 kept at ``train.keep``'s steps (``training.spec.milestone_paths`` names the files)."""
        return self.path / "milestones"

    def milestone_steps(self) -> list[int]:
        """The steps at which stage 1's weights were kept, ascending."""
        steps = (p.name[4:11] for p in self.milestones().glob("step???????.pt"))
        return sorted(int(s) for s in steps if s.isdigit())

    def best_model(self, stage: str) -> Path:
        """The EMA weights at the lowest held-out loss measured during a fine-tune (``finetune.eval_every``)."""
        return self.path / "models" / "best" / f"{stage}.pt"

    def heldout_curve(self, stage: str) -> Path:
        """JSON lines {"step", "value"}: the group's held-out loss measured during its fine-tune."""
        return self.path / "metrics" / "heldout" / f"{stage}.jsonl"

    def snapshots(self, stage: str) -> Path:
        """The folder of a group's EMA weights at every ``finetune.eval_every`` step (with ``finetune.fid_n``)."""
        return self.path / "models" / "snapshots" / stage

    def fid_curve_file(self) -> Path:
        """JSON lines: FID/KID of the whole progressive model at each fine-tune step every group reached."""
        return self.path / "metrics" / "fid_curve.jsonl"

    def metrics(self, stage: str) -> Path:
        return self.path / "metrics" / f"{stage}.jsonl"

    def samples(self) -> Path:
        return self.path / "samples"

    def sample_grid(self, which: str, steps: int, seed: int = 0) -> Path:
        return self.samples() / f"{which}_s{steps}_seed{seed}.png"

    def prune_record(self, g: int) -> Path:
        return self.path / "prune" / f"{self.group_stage(g)}.json"

    def uniform_record(self) -> Path:
        """The plan of the control at equal inference cost (``manager/stages/uniform.py``)."""
        return self.path / "prune" / "uniform.json"

    def schedule_file(self) -> Path:
        return self.path / "schedule.json"

    def schedule_plot(self) -> Path:
        return self.path / "schedule.png"

    def eval_file(self) -> Path:
        return self.path / "eval.json"

    def eval_array(self, kind: str, which: str) -> Path:
        """``eval/{kind}-{which}.npy``: a model's sample features or per-sample held-out losses."""
        return self.path / "eval" / f"{kind}-{which}.npy"

    def report_dir(self) -> Path:
        return self.path / "report"

    def lock_file(self) -> Path:
        return self.path / ".lock"

    def job_dir(self, job_id: int) -> Path:
        """A job's own folder: its spec and the journal it writes instead of the store (``manager.journal``)."""
        return self.path / "jobs" / f"{job_id:04d}"

    def job_log(self, job_id: int, stage: str, group: Optional[int]) -> Path:
        tag = stage if group is None else f"{stage}-g{group:02d}"
        return self.path / "logs" / f"{job_id:04d}-{tag}.log"

    def in_runs_folder(self, path: Path) -> str:
        """``path`` (inside this run's folder) as the store keeps it: relative to the runs folder, so it stays
        right when the runs folder moves or a command runs from elsewhere."""
        return str(Path(self.name) / Path(path).relative_to(self.path))


def record_base(run: Run, finished: bool = True) -> None:
    """``meta.json``'s record of stage 1's model: once stage 1 is finished (``finished``), the sha256 and size of
    ``models/base.pt`` (its origin kept: trained here unless imported or forked), which ``fork`` and ``show``
    check the file against; while stage 1 trains again (``finished=False``), none."""
    meta = run.meta
    base = {k: v for k, v in (meta.get("base") or {"origin": "trained"}).items() if k not in ("sha256", "bytes")}
    if finished:
        path = run.model("base")
        base.update(sha256=file_sha256(path), bytes=path.stat().st_size)
    elif "sha256" not in (meta.get("base") or {}):
        return  # nothing recorded: nothing to forget
    atomic_write_json({**meta, "base": base}, run.meta_file)


def base_changed(run: Run, digest: Optional[str] = None) -> Optional[str]:
    """How ``models/base.pt`` differs from what ``meta.json`` recorded when stage 1 finished, in a few words; None
    when it matches or nothing was recorded (stage 1 unfinished, or finished before records were kept).
    ``digest``: the file's sha256 when the caller has it already."""
    rec = run.meta.get("base") or {}
    if not rec.get("sha256"):
        return None
    path, want = run.model("base"), f"recorded sha256 {str(rec['sha256'])[:12]}"
    try:
        size = path.stat().st_size
        if rec.get("bytes") is not None and rec["bytes"] != size:
            return f"models/base.pt changed since stage 1 finished: {size} bytes, recorded {rec['bytes']}"
        digest = digest or file_sha256(path)
    except OSError as e:
        return f"models/base.pt is {'missing' if e.errno == errno.ENOENT else 'unreadable'} ({want})"
    if digest != rec["sha256"]:
        return f"models/base.pt changed since stage 1 finished: sha256 {digest[:12]}, {want}"
    return None


def set_launcher(run: Run, overrides: list[str]) -> dict:
    """Change where the run's remaining jobs go (``launcher.*`` overrides only: the experiment stays the same,
    and so does its config hash); returns the new launcher settings."""
    from core.config import apply_overrides

    if any(not o.startswith("launcher.") for o in overrides):
        raise UserError("only launcher settings can change when a run resumes")
    cfg = apply_overrides(run.config, overrides)
    with run_lock(run, "changing its launcher", wait=5.0):
        atomic_write_json(cfg, run.config_file)
    return cfg["launcher"]


@contextlib.contextmanager
def run_lock(run: Run, what: str, wait: float = 0.0):
    """Hold the run's writer lock while writing it: one writer per run. Another process that holds it (waited
    for up to ``wait`` seconds) is a ``UserError`` naming it; a lock of a dead process is free (the kernel drops
    an ``flock`` with its process)."""
    import fcntl
    import socket
    import time

    try:
        f = open(run.lock_file(), "a+")
    except OSError as e:
        raise UserError(f"cannot write run {run.name}'s folder {run.path}: {e.strerror}") from None
    end = time.time() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.time() >= end:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise UserError(
                    f"run {run.name} is being written by {holder}; wait for it to end or stop it "
                    f"(stepadapt kill {shlex.quote(run.name)})"
                ) from None
            time.sleep(0.1)
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} ({what})\n")
        f.flush()
        yield
    finally:
        f.truncate(0)
        f.close()  # closing drops the lock


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing), waiting for another holder; the kernel drops
    the lock of a process that dies. Where the lock cannot be made (a read-only folder) nothing can be written
    either, and the caller goes on unlocked."""
    import fcntl

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def check_run_name(name: str) -> str:
    """``name`` if it can name a run: not empty, printable characters only (a newline or a terminal escape sequence
    would be printed raw by every listing), no '/', no leading '.', at most 200 characters; else a one-line error."""
    if not name.strip():
        raise UserError("the run name is empty; give one, or leave the option out for PRESET-DATE-TIME")
    if not name.isprintable():
        raise UserError(f"bad run name {name!r}: printable characters only (no newline, tab or terminal escape)")
    if "/" in name or name in (".", "..") or name.startswith(".") or len(name) > 200:
        raise UserError(f"bad run name {name!r}: no '/', no leading '.', at most 200 characters")
    return name


def create_run(
    cfg: dict,
    name: Optional[str] = None,
    runs_dir: Optional[str] = None,
    status: str = "created",
    parent: Optional[str] = None,
) -> Run:
    root = runs_root(runs_dir)
    name = check_run_name(
        name if name is not None else f"{cfg['preset']}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    path = root / name
    try:
        path.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise UserError(
            f"run {name!r} already exists in {root}; continue it (stepadapt resume / --resume) or pick another name"
        ) from None
    except OSError as e:
        raise UserError(f"cannot create run folder {path}: {e.strerror or e}") from None
    from core import __version__

    meta = {
        "config_hash": config_hash(cfg),
        "seed": cfg["seed"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stepadapt_version": __version__,
        "command": sys.argv,
        **_git_state(),
    }
    if parent:
        meta["parent"] = parent
    try:
        atomic_write_json(cfg, path / CONFIG_FILE)
        atomic_write_json(meta, path / META_FILE)
    except UserError:  # a half-made folder would say "exists" to train and "not found" to resume
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        raise
    run = Run(path)
    register_run(run, status)
    return run


def register_run(run: Run, status: str = "created"):
    """The run's row in the store (created from its folder if missing, e.g. a run made before the store had runs)."""
    from core.store import open_store

    store = open_store(run.path.parent)
    row = store.get_run(run.name)
    if store.readonly or (
        row is not None and row["path"] == str(run.path.resolve()) and row["config_hash"] == run.meta.get("config_hash")
    ):
        return store, row  # up to date (or a read-only folder, shown as it is)
    if row is not None and row["config_hash"] == run.meta.get("config_hash") and not Path(row["path"]).exists():
        store.move_run(run.name, str(run.path.resolve()))  # the runs folder was moved: its jobs and tags stay
        return store, store.get_run(run.name)
    if row is not None:  # a run of the same name whose folder was deleted: the new folder wins
        store.forget_run(run.name)
    meta = run.meta
    store.add_run(
        {
            "name": run.name,
            "parent": meta.get("parent"),
            "status": status,
            "config": run.config,
            "config_hash": meta.get("config_hash"),
            "seed": meta.get("seed"),
            "git_sha": meta.get("git_sha"),
            "git_dirty": None if meta.get("git_dirty") is None else int(meta["git_dirty"]),
            "path": str(run.path.resolve()),
            "created": meta.get("created"),
        }
    )
    return store, store.get_run(run.name)


def open_run(name_or_path: str, runs_dir: Optional[str] = None) -> Run:
    """The run a user named: a folder path, an exact name, ``latest`` (the newest run), or a prefix of exactly
    one run's name; anything else is one error line, with the nearest names ("did you mean ...")."""
    p = Path(name_or_path).expanduser()
    root = runs_root(runs_dir)
    if not (p / CONFIG_FILE).is_file():
        p = root / name_or_path
    if not (p / CONFIG_FILE).is_file() and "/" not in name_or_path:
        p = root / resolve_run_name(name_or_path, root)
    try:
        json.loads((p / CONFIG_FILE).read_text())
    except json.JSONDecodeError:
        raise UserError(f"run {name_or_path!r} has a corrupt config.json") from None
    return Run(p)


def run_names(root: Path) -> list[str]:
    """The names of the run folders in ``root``, sorted."""
    try:
        return sorted(d.name for d in Path(root).iterdir() if is_run_folder(d))
    except OSError:
        return []


def resolve_run_name(name: str, root: Path) -> str:
    """``latest``: the run created last (``meta.json``'s time, else the folder's); a prefix: the one run whose
    name starts with it. Several matches or none: one ``UserError`` naming them or the nearest names."""
    import difflib

    names = run_names(root)
    if name == "latest" and names:

        def created(n: str) -> str:
            meta = read_json(root / n / META_FILE) or {}
            return str(meta.get("created") or "")

        return max(names, key=lambda n: (created(n), (root / n).stat().st_mtime))
    found = [n for n in names if n.startswith(name)]
    if len(found) == 1:
        return found[0]
    if found:
        more = f" (+{len(found) - 5} more)" if len(found) > 5 else ""
        raise UserError(f"run {name!r} is ambiguous in {root}: {', '.join(found[:5])}{more}; give more of the name")

    def score(n: str) -> float:  # a typo in the whole name, or in its beginning (a mistyped prefix)
        return max(difflib.SequenceMatcher(None, name, m).ratio() for m in (n, n[: len(name)]))

    near = sorted((n for n in names if score(n) >= 0.6), key=lambda n: -score(n))[:3]
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise UserError(f"run not found: {name!r} (looked in {root}){hint}")
