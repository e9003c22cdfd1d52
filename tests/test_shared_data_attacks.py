"""The third round of attacks on shared runs folders, pinned through the real CLI (docs/runs.md, "Files are data";
issue 28, findings 7, 10, 11 and 12): a parent's base edited in place, forged or oversized `llm-import` records,
decompression bombs in `eval --images`, a full disk under `report`, run names that carry terminal escapes."""

import hashlib
import json
import os
import struct
import subprocess
import zlib

import pytest

from core.method.llm import request_key
from tests.conftest import MICRO, assert_clean_error, run_cli


def _train(name, rd, *extra):
    """A micro run with a finished stage 1 (2 steps) through `stepadapt train`."""
    return run_cli("train", "--preset", "tiny", "--name", name, "--train-steps", "2", *MICRO, *extra, *rd, check=0)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- finding 7: a fork is never changed through its parent ------------------------------------------------------
def test_an_in_place_edit_of_a_parent_base_changes_no_fork_and_fork_and_show_find_it(runs_dir):
    rd = ["--runs-dir", runs_dir]
    _train("p", rd)
    parent = runs_dir / "p" / "models" / "base.pt"
    original = parent.read_bytes()
    meta = json.loads((runs_dir / "p" / "meta.json").read_text())
    assert meta["base"] == {"origin": "trained", "sha256": _sha(parent), "bytes": len(original)}
    assert "stage 1: trained here" in run_cli("show", "p", *rd, check=0).stdout

    run_cli("fork", "p", "f1", *rd, check=0)
    fork = runs_dir / "f1" / "models" / "base.pt"
    assert fork.stat().st_ino != parent.stat().st_ino  # a copy, never a hard link
    with open(parent, "r+b") as f:  # the attack: truncated in place, not replaced
        f.truncate(len(original) // 2)
    assert fork.read_bytes() == original  # the fork kept its own base
    assert json.loads((runs_dir / "f1" / "meta.json").read_text())["base"]["sha256"] == _sha(fork)
    assert "CHANGED" not in run_cli("show", "f1", *rd, check=0).stdout

    show = run_cli("show", "p", *rd, check=0)
    changed = [line for line in show.stdout.splitlines() if "CHANGED" in line]
    assert len(changed) == 1 and "models/base.pt changed since stage 1 finished" in changed[0], show.stdout
    assert "Traceback" not in show.stdout + show.stderr
    assert (
        "changed since stage 1 finished"
        in json.loads(run_cli("show", "p", "--json", *rd, check=0).stdout)["base_changed"]
    )
    p = run_cli("fork", "p", "f2", *rd)
    assert_clean_error(p)
    assert "not the one it finished with" in p.stderr and "unfinished" not in p.stderr, p.stderr
    assert not (runs_dir / "f2").exists()

    edited = bytearray(original)  # the same size, one byte changed in place: found by its sha256
    edited[len(edited) // 2] ^= 0xFF
    with open(parent, "r+b") as f:
        f.write(edited)
    p = run_cli("fork", "p", "f3", *rd)
    assert_clean_error(p)
    assert "sha256" in p.stderr and not (runs_dir / "f3").exists()
    with open(parent, "r+b") as f:  # put back as it was: forks are allowed again
        f.write(original)
    assert "CHANGED" not in run_cli("show", "p", *rd, check=0).stdout
    run_cli("fork", "p", "f4", *rd, check=0)


# -- findings 10, 11, 12: llm-import ----------------------------------------------------------------------------
def _call(**changes):
    """A well-formed exported call record (its request key computed as the proxy computes it)."""
    messages, params = [{"role": "user", "content": "hello"}], {"temperature": 0.0, "seed": 0, "max_tokens": 16}
    rec = {
        "type": "call",
        "id": 1,
        "run": "r",
        "group_index": 0,
        "session": "s",
        "round": 0,
        "seq": 0,
        "attempt": 0,
        "model_asked": "m",
        "messages": messages,
        "params": params,
        "request_key": request_key("m", messages, params),
        "source": "live",
        "response_text": "{}",
    }
    return {**rec, **changes}


def _big_messages():
    messages = [{"role": "user", "content": "x" * (1 << 20)}]
    return {"messages": messages, "request_key": request_key("m", messages, _call()["params"])}


@pytest.mark.parametrize(
    "bad, says",
    [
        (_call(bogus=1), "unknown field 'bogus'"),
        (_call(seq="zero"), "field 'seq' must be an integer"),
        (_call(attempt=True), "field 'attempt' must be an integer"),
        (_call(run=["r"]), "field 'run' must be text"),
        (_call(seq=1 << 70), "field 'seq' must be an integer within 64 bits"),
        (_call(params=[1]), "field 'params' must be an object"),
        (_call(messages="hello"), "field 'messages' must be a list of {role, content} messages"),
        (_call(response_text="x" * (300 * 1024)), "field 'response_text' is 307200 characters, at most 262144"),
        (_call(**_big_messages()), "field 'messages' is"),
        (_call(run="evil\x1b]0;owned\x07"), "printable characters only"),
        (
            _call(messages=[{"role": "user", "content": "something else"}]),
            "request_key does not match its model, messages and params",
        ),
        (
            {"type": "round", "run": "r", "group_index": 0, "session": "s", "round": 0, "loss": "low"},
            "field 'loss' must be a number",
        ),
        (
            {"type": "round", "run": "r", "group_index": 0, "session": "s", "round": 0, "extra": 1},
            "unknown field 'extra'",
        ),
    ],
)
def test_a_bad_llm_import_record_is_refused_in_one_line_naming_file_and_line(tmp_path, bad, says):
    """Line 1 is good, line 2 bad: one line `FILE:2: ...`, exit 2, and nothing of the file is imported."""
    path = tmp_path / "calls.jsonl"
    path.write_text(json.dumps(_call()) + "\n" + json.dumps(bad) + "\n")
    p = run_cli("llm-import", path, "--runs-dir", tmp_path / "runs")
    assert_clean_error(p)
    assert p.returncode == 2 and p.stderr.startswith(f"error: {path}:2: ") and says in p.stderr, p.stderr
    assert "internal error" not in p.stderr and "\x1b" not in p.stderr
    db = tmp_path / "runs" / "stepadapt.db"
    if db.exists():
        import sqlite3

        assert sqlite3.connect(db).execute("select count(*) from llm_calls").fetchone()[0] == 0


def _proxy_ready(name, rd):
    """A micro run ready for proxy pruning (the offline local search: no server)."""
    return _train(
        name,
        rd,
        "-S",
        "schedule.groups=3",
        "-S",
        "model.norm_groups=8",
        "-S",
        "prune.images=8",
        "-S",
        "prune.eval_images=4",
        "-S",
        "prune.batch_size=2",
        "-S",
        "prune.batches=1",
    )


def test_an_imported_answer_serves_replay_only_and_a_forged_request_key_is_refused(runs_dir, tmp_path):
    """An export whose first call's messages were swapped under its real request key is refused (it used to be
    imported and then served by the cache to the next live request with that key). An honest export imports, but
    its answers (one of them forged) never reach a live request through `--cache`: imported calls serve
    `--replay` only."""
    rd = ["--runs-dir", runs_dir]
    _proxy_ready("src", rd)
    run_cli("prune", "src", "--method", "proxy", "--rounds", "2", "--groups", "0", *rd, check=0)
    export = tmp_path / "src.jsonl"
    run_cli("llm-log", "src", "--export", export, *rd, check=0)
    lines = [json.loads(x) for x in export.read_text().splitlines()]
    assert lines[0]["type"] == "call"

    other = ["--runs-dir", tmp_path / "other"]
    poisoned = tmp_path / "poisoned.jsonl"
    swapped = [{"role": m["role"], "content": "Keep every unit at 0.05."} for m in lines[0]["messages"]]
    poisoned.write_text("".join(json.dumps(r) + "\n" for r in [{**lines[0], "messages": swapped}, *lines[1:]]))
    p = run_cli("llm-import", poisoned, *other)
    assert_clean_error(p)
    assert f"{poisoned}:1: request_key does not match its model, messages and params" in p.stderr

    forged = tmp_path / "forged.jsonl"  # a consistent record whose answer is not what the LLM said
    forged.write_text("".join(json.dumps(r) + "\n" for r in [{**lines[0], "response_text": "FORGED"}, *lines[1:]]))
    assert "imported" in run_cli("llm-import", forged, *other, check=0).stdout
    imported = json.loads(run_cli("llm-log", "src", "--json", *other, check=0).stdout)
    assert imported and {c["source"] for c in imported} == {"import"}
    _proxy_ready("twin", other)
    run_cli("prune", "twin", "--method", "proxy", "--rounds", "2", "--groups", "0", "--cache", *other, check=0)
    twin = json.loads(run_cli("llm-log", "twin", "--json", *other, check=0).stdout)
    keys = {c["request_key"] for c in lines if c["type"] == "call"}
    assert twin[0]["request_key"] in keys  # the very request an imported answer was recorded for
    assert {c["source"] for c in twin} == {"live"}, twin
    whole = run_cli("llm-log", "twin", "--call", twin[0]["id"], "--json", *other, check=0).stdout
    assert "FORGED" not in whole


# -- finding 11: eval --images and report -----------------------------------------------------------------------
def _png_header_bomb(path, side):
    """A 1-bit PNG of side x side pixels, zeros, a few KiB on disk (a decompression bomb), written row by row."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z, row, parts = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8), []
    parts += [z.compress(row) for _ in range(side)]
    idat = b"".join(parts) + z.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def test_eval_images_skips_decompression_bombs_with_a_warning_and_counts_what_it_skipped(tmp_path):
    from PIL import Image

    from core import config as C
    from core.training.data import load_dataset

    folder = tmp_path / "imgs"
    folder.mkdir()
    cfg = C.resolve("tiny", None, [])
    for i, im in enumerate(load_dataset(cfg, split="all").get(__import__("torch").arange(4))):
        Image.fromarray(im[0].numpy()).save(folder / f"{i:04d}.png")
    _png_header_bomb(folder / "bomb.png", 15000)  # 225 M pixels: over twice PIL's limit
    _png_header_bomb(folder / "warn.png", 10000)  # 100 M pixels: over its limit (PIL only warns; decoded, 100 MB)
    os.mkfifo(folder / "fifo.png")
    p = run_cli("eval", "--images", folder, "--preset", "tiny", "--json", "--runs-dir", tmp_path, check=0)
    assert json.loads(p.stdout)["folders"][0]["n"] == 4
    for name in ("bomb.png", "warn.png"):
        assert f"{name} declares more pixels than are decoded safely (a decompression bomb); skipped" in p.stderr
    assert "3 of 7 files skipped (2 decompression bombs, 1 not regular files)" in p.stderr
    assert "Traceback" not in p.stderr and "DecompressionBomb" not in p.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root; skipped where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_report_on_a_full_disk_is_one_line_that_says_so(small_disk):
    rd = ["--runs-dir", small_disk / "runs"]
    _train("r", rd)
    fill, free = small_disk / "fill", os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    fill.write_bytes(b"\0" * (free - 40 * 1024))  # room for the store's WAL files; none for the report's writes
    p = run_cli("report", "r", *rd)
    assert_clean_error(p)
    assert "no space left on device" in p.stderr and "internal error" not in p.stderr, p.stderr
    with open(small_disk / "rest", "wb", buffering=0) as f:  # not one byte left: the store itself cannot open its WAL
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    p = run_cli("report", "r", *rd)
    assert_clean_error(p)
    assert "no space left on device" in p.stderr and "disk I/O error" not in p.stderr, p.stderr
    fill.unlink()
    (small_disk / "rest").unlink()
    run_cli("report", "r", *rd, check=0)


# -- finding 12: run names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["two\nlines", "title\x1b]0;owned\x07", "tab\there", "rtl\u202eexe.gnp", "bell\x07"])
def test_a_run_name_with_control_characters_is_refused_in_one_line(runs_dir, name):
    rd = ["--runs-dir", runs_dir]
    for args in (
        ("train", "--preset", "tiny", "--name", name, "--train-steps", "1", *MICRO),
        ("run", "--preset", "tiny", "--name", name),
        ("import", name, "--from-iddpm", runs_dir / "x.pt"),
    ):
        p = run_cli(*args, *rd)
        assert_clean_error(p)
        assert "printable characters only" in p.stderr and "\x1b" not in p.stderr and "\x07" not in p.stderr, p.stderr
    assert not [d for d in runs_dir.iterdir() if d.is_dir()]


def test_create_run_refuses_a_name_that_only_a_fork_would_have_checked(runs_dir):
    rd = ["--runs-dir", runs_dir]
    _train("base", rd)
    p = run_cli("fork", "base", "f\x1b[2J", *rd)
    assert_clean_error(p)
    assert "printable characters only" in p.stderr and "\x1b" not in p.stderr
    assert sorted(d.name for d in runs_dir.iterdir() if d.is_dir()) == ["base"]
