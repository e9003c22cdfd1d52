"""One story about which pruning candidate each group kept: `show`, `logs`, `llm-log --json`, the TUI's proxy
view and the report all name the candidate that `prune/groupNN.json` records (not each group's last round), in
1-based rounds and tries; and `runs`/`show` say the method the plans were made with."""

import json
import re

import pytest

from core.chosen import chosen_candidates
from core.runs import Run, read_json
from core.store import open_store
from tests.conftest import MICRO, run_cli

pytestmark = pytest.mark.xdist_group("chosen")  # its module fixture is built once, on one worker


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A micro run whose two groups were pruned by the offline proxy, three rounds of two proposals each."""
    rd = tmp_path_factory.mktemp("chosen")
    extra = [*MICRO, "-S", "schedule.groups=2", "-S", "prune.images=16"]
    run_cli("train", "--preset", "tiny", "--name", "p", "--train-steps", "3", *extra, "--runs-dir", rd, check=0)
    run_cli("prune", "p", "--method", "proxy", "--rounds", "3", "--proposals", "2", "--runs-dir", rd, check=0)
    return rd


def test_every_view_names_the_same_chosen_candidate(pruned):
    from core.evaluation.report import write_report
    from stepadapt_cli.tui.data import proxy_view

    run, store = Run(pruned / "p"), open_store(pruned)
    kept = chosen_candidates(run, store.rounds("p"), store.calls("p"))
    assert kept, "no group was pruned by the proxy"
    for g, c in kept.items():
        rec = read_json(run.prune_record(g))
        assert c["round"] == rec["report"]["proxy"]["winner_round"] + 1 and c["try"] >= 1
        rounds = [r for r in store.rounds("p", g) if r["round"] == c["round"] - 1 and r["accepted"]]
        assert c["loss"] == min(r["loss"] for r in rounds)
    # llm-log --json: exactly one chosen call per group, the same call
    calls = json.loads(run_cli("llm-log", "p", "--json", "--runs-dir", pruned, check=0).stdout)
    chosen_calls = {c["group"]: c for c in calls if c["chosen"]}
    assert {g: c["id"] for g, c in chosen_calls.items()} == {g: c["call_id"] for g, c in kept.items()}
    assert min(c["round"] for c in calls) == 1 and min(c["try"] for c in calls) == 1  # 1-based
    assert sum(c["verdict"] == "accepted" for c in calls) > len(kept)  # the others are not marked chosen
    # show --json and show's table
    shown = json.loads(run_cli("show", "p", "--json", "--runs-dir", pruned, check=0).stdout)
    assert {int(g): c["call_id"] for g, c in shown["chosen"].items()} == {g: c["call_id"] for g, c in kept.items()}
    text = run_cli("show", "p", "--runs-dir", pruned, env={"COLUMNS": "200"}, check=0).stdout
    for g, c in kept.items():
        assert f"round {c['round']}, try {c['try']}: loss {c['loss']:.5f}" in text
    # the TUI's data
    view = proxy_view(store, run)
    tui = {r["call"]["group_index"]: r["call"]["id"] for r in view["rows"] if r["chosen"]}
    assert tui == {g: c["call_id"] for g, c in kept.items()}
    # the report: one chosen row per group, at the kept round and try; rejected tries are there too
    html, md = write_report(run, [], run.report_dir())
    rows = [line for line in md.read_text().splitlines() if re.match(r"\| \d+ \| \d+ \| \d+ \|", line)]
    chosen_rows = {int(r.split("|")[1]): r for r in rows if "| chosen |" in r}
    for g, c in kept.items():
        assert f"| {g} | {c['round']} | {c['try']} |" in chosen_rows[g]
    assert "| reason |" not in md.read_text()
    assert len(rows) == len(calls)  # every try, rejected or not


def test_pruning_again_with_another_method_is_what_runs_and_show_say(pruned):
    rd = ["--runs-dir", pruned]
    run_cli("train", "--preset", "tiny", "--name", "m", "--train-steps", "2", *MICRO, *rd, check=0)
    run_cli("prune", "m", "--method", "magnitude", *rd, check=0)
    assert Run(pruned / "m").config["prune"]["method"] == "proxy"  # configured for the proxy
    row = next(r for r in json.loads(run_cli("runs", "--json", *rd, check=0).stdout) if r["name"] == "m")
    assert row["method"] == "magnitude"
    shown = json.loads(run_cli("show", "m", "--json", *rd, check=0).stdout)
    assert shown["run"]["method"] == "magnitude"
    assert {g["prune_method"] for g in shown["groups"] if g["size"]} == {"magnitude"}
    assert "magnitude" in run_cli("runs", "--method", "magnitude", *rd, env={"COLUMNS": "200"}, check=0).stdout
