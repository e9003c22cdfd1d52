"""`stepadapt tui` headless with App.run_test(), over a store written through the real store API."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from core import config as C
from core.manager.jobs import pid_alive, proc_start
from core.method.schedule import run_schedule
from core.runs import Run, create_run
from core.store import MIGRATIONS, Store, open_store
from stepadapt_cli.tui.app import StepadaptApp
from stepadapt_cli.tui.job_screen import JobScreen
from stepadapt_cli.tui.run_screen import RunScreen
from stepadapt_cli.tui.runs_screen import RunsScreen

SNAPSHOTS = Path(__file__).parent / "snapshots"
MICRO = [
    "model.model_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[16]",
    "diffusion.steps=100",
    "schedule.groups=3",
]


def _text(widget: Static) -> str:
    return str(widget.content)


def _rows(screen) -> list[list[str]]:
    t = screen.query_one(DataTable)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


async def _until(pilot, cond, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        await pilot.pause(0.1)
        if cond():
            return True
    raise AssertionError("timed out waiting for the UI")


@pytest.fixture
def run_in_store(tmp_path):
    """A run with its schedule, a base job done and group 0 fine-tuning, all through the real APIs."""
    cfg = C.resolve("tiny", None, MICRO)
    run = create_run(cfg, "live", tmp_path)
    run_schedule(run)
    store = open_store(tmp_path)
    base = store.add_job({"run": "live", "stage": "base", "status": "running", "progress": 0, "total": 30})
    store.update_job(base, progress=30)
    store.finish_job(base, "succeeded", 0)
    store.log_metrics(
        [
            {
                "run": "live",
                "job": base,
                "stage": "base",
                "group_index": None,
                "step": s,
                "key": "loss",
                "value": v,
                "time": 0.0,
            }
            for s, v in ((10, 0.9), (20, 0.5), (30, 0.3))
        ]
    )
    # a real process stands in for the training job (a running job without a live process is marked lost)
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"], start_new_session=True)
    time.sleep(0.2)
    ft = store.add_job(
        {
            "run": "live",
            "stage": "finetune",
            "group_index": 0,
            "status": "running",
            "progress": 10,
            "total": 150,
            "heartbeat": time.time(),
            "pid": proc.pid,
            "pgid": proc.pid,
            "proc_start": proc_start(proc.pid),
        }
    )
    yield tmp_path, store, ft, proc
    proc.kill()
    proc.wait()


def test_empty_and_missing_runs_dir(tmp_path):
    async def go():
        app = StepadaptApp(tmp_path / "nothing-here")
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: "No runs in" in _text(app.screen.query_one("#message")))
            assert isinstance(app.screen, RunsScreen)
            assert "stepadapt run --preset tiny" in _text(app.screen.query_one("#message"))

    asyncio.run(go())


def test_store_of_an_older_schema_is_migrated(tmp_path):
    import sqlite3

    import sqlite_utils

    db = sqlite_utils.Database(sqlite3.connect(tmp_path / "stepadapt.db"))
    db["_migrations"].create({"name": str, "applied": str}, pk="name")
    for name, fn in MIGRATIONS[:2]:  # the store as the proxy issue left it
        fn(db)
        db["_migrations"].insert({"name": name, "applied": "then"})
    db.conn.commit()
    db.conn.close()

    async def go():
        app = StepadaptApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: "No runs in" in _text(app.screen.query_one("#message")))

    asyncio.run(go())
    names = [r["name"] for r in Store(tmp_path / "stepadapt.db").db["_migrations"].rows]
    assert names == [n for n, _ in MIGRATIONS]


def test_group_rows_update_as_rows_are_written(run_in_store):
    root, store, ft, proc = run_in_store

    async def go():
        app = StepadaptApp(root, poll=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: [r[0] for r in _rows(app.screen)] == ["live"])
            await pilot.press("enter")
            await _until(pilot, lambda: isinstance(app.screen, RunScreen))
            rows = {r[0]: r for r in _rows(app.screen)}
            assert rows["0"][4] == "running" and rows["0"][5] == "10/150"
            # another process's writes (here: another connection) show up without any key press
            writer = Store(root / "stepadapt.db")
            writer.update_job(ft, progress=75)
            writer.log_metrics(
                [
                    {
                        "run": "live",
                        "job": ft,
                        "stage": "finetune",
                        "group_index": 0,
                        "step": 75,
                        "key": "loss",
                        "value": 0.25,
                        "time": 0.0,
                    }
                ]
            )
            await _until(pilot, lambda: {r[0]: r for r in _rows(app.screen)}["0"][5] == "75/150")
            row = {r[0]: r for r in _rows(app.screen)}["0"]
            assert row[6] == "#####-----" and row[7] == "0.2500"

    asyncio.run(go())


EVAL = {
    "models": {
        name: {
            "fid": fid,
            "fid_ci": [fid - 0.05, fid + 0.1],
            "kid": kid,
            "kid_ci": [kid / 2, kid * 1.5],
            "macs": macs,
            "train_steps": 1600,
            "loss_groups": {str(g): 0.03 + 0.01 * g + d for g in range(3)},
        }
        for name, fid, kid, macs, d in (
            ("base", 0.22, 0.0022, 2.5e8, 0.001),
            ("control", 0.23, 0.0026, 2.5e8, 0.0005),
            ("progressive", 0.25, 0.0027, 1.75e8, 0.0),
        )
    },
    "comparisons": [
        {
            "model": "progressive",
            "against": against,
            "primary": "fid",
            "macs_ratio": 0.7,
            "fid": {"diff": 0.02, "ci": [-0.023, 0.071], "paired": True, "verdict": "no significant difference"},
            "loss_groups": {str(g): {"diff": -d, "rel": -d / 0.03, "ci": [-1.5 * d, -0.5 * d]} for g in range(3)},
        }
        for against, d in (("base", 0.001), ("control", 0.0005))
    ],
}


def _screen_text(app) -> str:
    """The screen as the user sees it, one line per terminal row (trailing blanks cut)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip).rstrip() for strip in strips) + "\n"


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_run_screen_snapshot(run_in_store, size):
    """The whole run screen as text at 80x24 and 160x48, with an evaluation: stages, the schedule strip with every
    group's label apart from the next, FID/KID with intervals and the verdicts (shortened at 80 columns so the
    group rows keep their room), the group rows (budget, status, fine-tune progress, the hybrid training loss,
    its sparkline, the held-out loss against base and control). At 160 columns the strip, the progress bar and
    the sparkline are wider. A change of layout shows as a diff of tests/snapshots/run_screen_WxH.txt;
    UPDATE_SNAPSHOTS=1 rewrites them, except under CI."""
    root, store, ft, proc = run_in_store
    run = Run(root / "live")
    run.eval_file().write_text(json.dumps(EVAL))
    store.log_metrics(
        [
            {
                "run": "live",
                "job": ft,
                "stage": "finetune",
                "group_index": 0,
                "step": s,
                "key": "loss",
                "value": 1.0 / s,
                "time": 0.0,
            }
            for s in range(1, 40)
        ]
    )
    snapshot = SNAPSHOTS / f"run_screen_{size[0]}x{size[1]}.txt"

    async def go():
        app = StepadaptApp(root, "live")
        async with app.run_test(size=size) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, RunScreen) and len(_rows(app.screen)) == 4)
            await pilot.pause(0.2)
            table = app.screen.query_one(DataTable)
            assert table.region.height >= 5  # the header and every group row are on screen
            return _screen_text(app)

    text = asyncio.run(go())
    if os.environ.get("UPDATE_SNAPSHOTS") and not os.environ.get("CI"):  # never under CI: it must compare
        snapshot.write_text(text)  # UPDATE_SNAPSHOTS=1 pytest tests/test_tui.py, then review the diff
    assert text == snapshot.read_text()


def test_kill_action_reaches_the_job_layer(run_in_store):
    root, store, ft, proc = run_in_store
    # a real process stands in for the training job
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"], start_new_session=True)
    time.sleep(0.2)
    store.update_job(ft, pid=proc.pid, pgid=proc.pid, proc_start=proc_start(proc.pid), heartbeat=time.time())

    async def go():
        app = StepadaptApp(root, "live", poll=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, RunScreen) and _rows(app.screen))
            # the job log screen of the selected group row, then kill with confirmation
            t = app.screen.query_one(DataTable)
            t.move_cursor(row=1)
            await pilot.press("l")
            await _until(pilot, lambda: isinstance(app.screen, JobScreen))
            await pilot.press("k")
            await pilot.pause(0.2)
            await pilot.press("n")  # no: nothing happens
            await pilot.pause(0.3)
            assert Store(root / "stepadapt.db").job(ft)["status"] == "running"
            await pilot.press("k")
            await pilot.pause(0.2)
            await pilot.press("y")
            await _until(pilot, lambda: Store(root / "stepadapt.db").job(ft)["status"] == "killed", 20)

    asyncio.run(go())
    assert proc.wait(timeout=10) != 0  # it was interrupted, not finished
    assert not pid_alive(proc.pid)


def test_resume_and_kill_from_the_run_screen(tmp_path):
    """`r` `y` on a stopped run starts its pipeline in the background from a worker thread (which must use its
    own store connection: it used to crash the app), `k` `y` then stops it; the app stays up throughout."""
    cfg = C.resolve("tiny", None, MICRO + ["train.steps=100000", "train.batch_size=8", "prune.method=none"])
    create_run(cfg, "paused", tmp_path)
    open_store(tmp_path).update_run("paused", status="killed")

    def jobs():
        return {j["stage"]: j for j in Store(tmp_path / "stepadapt.db").jobs("paused")}

    async def go():
        app = StepadaptApp(tmp_path, "paused", poll=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, RunScreen))
            await pilot.press("r")
            await pilot.pause(0.2)
            await pilot.press("y")
            await _until(pilot, lambda: jobs().get("base", {}).get("status") == "running", 60)
            assert app.is_running and isinstance(app.screen, RunScreen)
            await pilot.press("k")
            await pilot.pause(0.2)
            await pilot.press("y")
            await _until(
                pilot,
                lambda: (
                    Store(tmp_path / "stepadapt.db").get_run("paused")["status"] == "killed"
                    and not Store(tmp_path / "stepadapt.db").jobs("paused", active=True)
                ),
                60,
            )
            assert app.is_running

    asyncio.run(go())
    js = jobs()
    assert js["pipeline"]["status"] == "killed" and js["base"]["status"] == "killed"
    assert not pid_alive(js["pipeline"]["pid"]) and not pid_alive(js["base"]["pid"])


@pytest.mark.parametrize("width", [30, 50, 120])
def test_group_labels_in_the_schedule_strip_never_overwrite_each_other(tmp_path, width):
    """tiny's groups 0 and 1 start a few timesteps apart, as do 6, 7 and 9: every non-empty group keeps its label,
    with a space before the next one (5 6 7 9, never 5679)."""
    from core.manager.monitor import draw_schedule, schedule_profile
    from core.method.schedule import schedule_from_config

    run = create_run(C.resolve("tiny", None, []), "strip", tmp_path)
    labels = draw_schedule(schedule_profile(run), width).splitlines()[2].split("t=")[0][len("groups  ") :]
    assert labels.split() == [str(g.index) for g in schedule_from_config(run.config).nonempty]


def test_tui_of_an_unknown_run_is_one_error_line(tmp_path):
    from tests.conftest import assert_clean_error, run_cli

    assert_clean_error(run_cli("tui", "nosuch", "--runs-dir", tmp_path))


def test_filter_matching_nothing_says_so_and_escape_closes_it(run_in_store):
    root, store, ft, proc = run_in_store

    async def go():
        app = StepadaptApp(root, poll=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: [r[0] for r in _rows(app.screen)] == ["live"])
            await pilot.press("slash", *"zzz")
            await _until(pilot, lambda: "no run matches 'zzz'" in _text(app.screen.query_one("#message")))
            assert _rows(app.screen) == []
            await pilot.press("escape")
            await _until(pilot, lambda: [r[0] for r in _rows(app.screen)] == ["live"])
            assert not app.screen.query_one("#filter").display

    asyncio.run(go())


def test_proxy_view_marks_the_chosen_candidate_and_shows_rejected_tries(run_in_store):
    """Every try is a row (a rejected one with its reason), the chosen candidate is starred, the summary has the
    unpruned loss and each round's loss; the detail opens at the answer as indented JSON, the prompt one key away."""
    import json

    root, store, ft, proc = run_in_store
    base = {
        "run": "live",
        "group_index": 0,
        "model_asked": "openai/x",
        "params": {},
        "request_key": "k" * 64,
        "source": "live",
        "session": "s1",
        "messages": [{"role": "user", "content": "THE PROMPT"}],
    }
    store.log_call({**base, "round": 0, "seq": 0, "attempt": 0, "response_text": "no", "validation_error": "no JSON"})
    first = store.log_call({**base, "round": 0, "seq": 1, "attempt": 1, "response_text": '{"keep": {"a": 0.5}}'})
    second = store.log_call({**base, "round": 1, "seq": 2, "attempt": 0, "response_text": '{"keep": {"a": 0.6}}'})
    for rnd, call, loss in ((0, first, 0.3), (1, second, 0.1)):
        store.log_round(
            {
                "run": "live",
                "group_index": 0,
                "session": "s1",
                "round": rnd,
                "accepted": 1,
                "macs": 1e8,
                "loss": loss,
                "call_id": call,
            }
        )
    rec = root / "live" / "prune" / "group00.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"report": {"proxy": {"base_loss": 0.2, "winner_round": 1, "session": "s1"}}}))

    async def go():
        app = StepadaptApp(root, "live", poll=0.1)
        async with app.run_test(size=(100, 30)) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, RunScreen) and _rows(app.screen))
            await pilot.press("p")
            await _until(pilot, lambda: len(_rows(app.screen)) == 3)
            rows = _rows(app.screen)
            assert [r[3] for r in rows] == ["rejected", "accepted", "* chosen"] and rows[0][7] == "no JSON"
            assert "unpruned 0.2000  r1 0.3000  r2 0.1000*" in _text(app.screen.query_one("#proxysum"))
            app.screen.query_one(DataTable).move_cursor(row=2)
            await pilot.press("enter")
            await _until(pilot, lambda: '"keep"' in _text(app.screen.query_one("#call")))
            assert "THE PROMPT" not in _text(app.screen.query_one("#call"))
            await pilot.press("m")
            await _until(pilot, lambda: "THE PROMPT" in _text(app.screen.query_one("#call")))
            shown = _text(app.screen.query_one("#call"))
            assert shown.index("THE PROMPT") < shown.index("--- answer ---")  # on top, where it is seen

    asyncio.run(go())


def test_key_help_is_built_from_every_screens_bindings(tmp_path):
    """`?` shows a help whose lines list each screen's bound keys with their descriptions (built from the
    bindings, so a new key shows up there without anyone editing the help)."""
    from stepadapt_cli.tui.proxy_screen import ProxyScreen

    async def go():
        app = StepadaptApp(tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("question_mark")
            await _until(pilot, lambda: bool(app.screen.query("#help")))
            text = _text(app.screen.query_one("#help"))
            for cls in (RunsScreen, RunScreen, JobScreen, ProxyScreen):
                for b in cls.BINDINGS:
                    if b.description and b.key != "question_mark":
                        assert b.description in text, (cls.__name__, b.description, text)
            assert "ctrl+q quit" in text

    asyncio.run(go())


def test_runs_list_shows_the_progressive_models_fid_and_verdict_not_the_best_of_all(tmp_path):
    """A run whose control scores best (0.11) and whose progressive model is worse (0.21, WORSE than the
    control) shows 0.210 and WORSE in the runs list, as `stepadapt runs` does, never 0.11."""
    from core.runs import atomic_write_json

    run = create_run(C.resolve("tiny", None, MICRO), "lost", tmp_path)
    ev = {
        "models": {"base": {"fid": 0.22}, "control": {"fid": 0.11}, "progressive": {"fid": 0.21}},
        "comparisons": [{"model": "progressive", "against": "control", "verdict": "worse"}],
    }
    atomic_write_json(ev, run.eval_file())

    async def go():
        app = StepadaptApp(tmp_path)
        async with app.run_test(size=(100, 24)) as pilot:
            await _until(pilot, lambda: len(_rows(app.screen)) == 1)
            row = _rows(app.screen)[0]
            assert "0.210" in row and "WORSE" in row, row
            assert not any("0.11" in c for c in row), row

    asyncio.run(go())


def test_run_screen_offers_kill_and_resume_only_where_they_apply_and_opens_a_stage_jobs_log(tmp_path):
    """A killed run's footer offers resume, not kill (k does nothing); a control job gets its own row, whose log
    `l` opens; q quits from the run screen."""
    from stepadapt_cli.tui.dialogs import Confirm
    from stepadapt_cli.tui.job_screen import JobScreen

    run = create_run(C.resolve("tiny", None, MICRO), "stopped", tmp_path)
    store = open_store(tmp_path)
    log = run.job_log(1, "control", None)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("[control] step 5/10\n")
    job = store.add_job({"run": "stopped", "stage": "control", "status": "running", "total": 10})
    store.update_job(job, progress=5, log_path=str(log))
    store.finish_job(job, "killed", 130)
    store.update_run("stopped", status="killed")

    async def go():
        app = StepadaptApp(tmp_path, "stopped", poll=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, RunScreen) and "control" in _screen_text(app), 60)
            await _until(pilot, lambda: "esc back" in _screen_text(app), 30)
            footer = next(line for line in _screen_text(app).splitlines() if "esc back" in line)
            assert "resume" in footer and "kill" not in footer, footer
            await pilot.press("k")
            await pilot.pause(0.3)
            assert not isinstance(app.screen, Confirm)
            table = app.screen.query_one(DataTable)
            table.move_cursor(row=[str(r[0]) for r in _rows(app.screen)].index("control"))
            await pilot.press("l")
            await _until(pilot, lambda: isinstance(app.screen, JobScreen))
            await pilot.press("q")
            await pilot.pause(0.3)
            assert not app.is_running

    asyncio.run(go())


def test_samples_view_draws_each_models_grid_side_by_side_and_the_palette_opens_it(tmp_path):
    """`s` on the run screen, and the command palette's "samples of RUN", show the evaluation's grids of every
    model in half blocks: two white pixels are a '▀' in white on white, two black ones black on black."""
    from PIL import Image

    from core.runs import atomic_write_json
    from stepadapt_cli.tui.samples_screen import SamplesScreen

    run = create_run(C.resolve("tiny", None, MICRO), "seen", tmp_path)
    (run.path / "samples").mkdir(exist_ok=True)
    ev = {"models": {}}
    for name, shade in (("base", 255), ("progressive", 0)):
        im = Image.new("L", (32, 32), shade)
        im.putpixel((0, 1), 255 - shade)
        im.save(run.path / "samples" / f"eval_{name}.png")
        ev["models"][name] = {"fid": 0.2, "macs": 1e8, "fid_grid": f"samples/eval_{name}.png"}
    atomic_write_json(ev, run.eval_file())

    async def go():
        app = StepadaptApp(tmp_path, "seen", poll=0.1)
        async with app.run_test(size=(100, 40)) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, RunScreen), 60)
            await pilot.press("s")
            await _until(pilot, lambda: isinstance(app.screen, SamplesScreen) and "▀" in _screen_text(app), 60)
            text = _screen_text(app)
            assert "base" in text and "progressive" in text
            styles = {str(seg.style) for strip in app.screen._compositor.render_strips() for seg in strip}
            colours = {s.replace(" ", "") for s in styles}
            assert "#ffffffon#ffffff" in colours, colours  # the white grid (base)
            assert "#000000on#000000" in colours, colours  # the black one (progressive)
            await pilot.press("escape")
            await pilot.press("ctrl+p")
            await pilot.pause(0.3)
            await pilot.press(*"samples of seen")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await _until(pilot, lambda: isinstance(app.screen, SamplesScreen), 30)

    asyncio.run(go())
