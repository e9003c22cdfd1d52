"""The listings at 80 columns (`COLUMNS=80`, output piped as in `stepadapt runs | less`): no line is wider than
the console, the run's whole name is on one line, one run's tables have no repeated run column, intervals take
their narrow form; `compare` with a run not evaluated yet shows what exists. On a real run: trained, pruned by
the proxy, fine-tuned, with its control and an evaluation."""

import json

import pytest

from tests.conftest import MICRO, run_cli

pytestmark = pytest.mark.xdist_group("columns")  # its module fixture is built once, on one worker

NAME = "demo-20250611-142233-with-a-longer-name"  # 39 characters: the name that used to be cut ("demo-…")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    rd = tmp_path_factory.mktemp("columns")
    extra = [*MICRO, "-S", "schedule.groups=2", "-S", "eval.loss_images=16", "-S", "prune.images=16"]
    run_cli("train", "--preset", "tiny", "--name", NAME, "--train-steps", "4", *extra, "--runs-dir", rd, check=0)
    run_cli("prune", NAME, "--method", "proxy", "--rounds", "2", "--runs-dir", rd, check=0)
    run_cli("finetune", NAME, "--finetune-steps", "2", "--runs-dir", rd, check=0)
    run_cli("control", NAME, "--runs-dir", rd, check=0)
    run_cli("eval", NAME, "--samples", "16", "--sample-steps", "4", "--runs-dir", rd, check=0)
    run_cli("train", "--preset", "tiny", "--name", "fresh", "--train-steps", "2", *MICRO, "--runs-dir", rd, check=0)
    return rd


def at80(*args, rd):
    return run_cli(*args, "--runs-dir", rd, env={"COLUMNS": "80"}, check=0).stdout


def assert_fits(out: str, width: int = 80) -> None:
    assert out.strip(), "nothing printed"
    wide = [line for line in out.splitlines() if len(line) > width]
    assert not wide, f"{len(wide)} lines over {width} columns:\n" + "\n".join(wide)
    assert "…" not in out.replace("…'", ""), f"a cell was cut:\n{out}"


def table_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("│")]


@pytest.mark.parametrize(
    "args",
    [["runs"], ["show", NAME], ["show", NAME, "--artifacts"], ["compare", NAME], ["llm-log", NAME]],
)
def test_every_listing_fits_80_columns_with_the_whole_name(evaluated, args):
    out = at80(*args, rd=evaluated)
    assert_fits(out)
    assert NAME in out  # on one line, uncut
    if args[0] != "runs":  # one run: its name is not repeated on every row
        assert not any(NAME in line for line in table_lines(out)), out
    if args[0] in ("runs", "compare", "eval"):
        assert "±" in out and " [" not in "".join(table_lines(out))  # the narrow interval, not '[lo, hi]'


def test_eval_fits_80_columns_with_narrow_intervals(evaluated):
    """A cached `eval` (the models and settings unchanged: nothing is sampled again) at 80 columns."""
    out = at80("eval", NAME, "--samples", "16", "--sample-steps", "4", rd=evaluated)
    assert_fits(out)
    assert NAME in out and not any(NAME in line for line in table_lines(out))
    assert "±" in out and " [" not in "".join(table_lines(out))


def test_show_puts_the_verdict_first_and_the_artifacts_behind_a_flag(evaluated):
    from core.manager.stages.eval import write_run_report
    from core.runs import Run
    from core.store import open_store

    write_run_report(Run(evaluated / NAME), open_store(evaluated), lambda s: None)  # as the pipeline does
    out = at80("show", NAME, rd=evaluated)
    lines = out.splitlines()
    assert lines[0].startswith(NAME)
    assert lines[1].startswith("progressive vs control: ")  # the verdict right under the name
    assert "artifacts (" in out and "--artifacts" in out and "sha256" not in out.split("stages:")[1]
    full = at80("show", NAME, "--artifacts", rd=evaluated)
    assert "report/index.html" in full and "job None" not in full  # the pipeline's report: no job


def test_piped_output_honours_columns(evaluated):
    wide = run_cli("runs", "--runs-dir", evaluated, env={"COLUMNS": "160"}, check=0).stdout
    narrow = at80("runs", rd=evaluated)
    assert max(map(len, wide.splitlines())) > 80 >= max(map(len, narrow.splitlines()))
    assert "created" in wide and "left out at 80 columns" in narrow
    assert "runs in runs" not in wide and str(evaluated.resolve()) in wide


def test_llm_log_shows_only_what_varies_and_wide_brings_the_rest(evaluated):
    out = at80("llm-log", NAME, rd=evaluated)
    assert "all: " in out and "model stepadapt/local-search" in out.replace("\n", " ")  # said once
    assert "* chosen" in out
    wide = run_cli("llm-log", NAME, "--wide", "--runs-dir", evaluated, check=0).stdout
    assert "stepadapt/local-search" in "".join(table_lines(wide)) and "latency" in wide


def test_compare_with_a_run_not_evaluated_shows_what_exists(evaluated):
    out = at80("compare", NAME, "fresh", rd=evaluated)
    assert_fits(out)
    assert "not evaluated" in out and "progressive" in out and "config keys that differ" in out
    assert "stage-1 models" in out  # the stage-1 sharing: these two do not share one
    data = json.loads(run_cli("compare", NAME, "fresh", "--json", "--runs-dir", evaluated, check=0).stdout)
    assert data["not_evaluated"] == ["fresh"] and {r["run"] for r in data["rows"]} == {NAME}


def test_one_fid_precision_everywhere(evaluated):
    ev = json.loads((evaluated / NAME / "eval.json").read_text())
    fid = f"{ev['models']['progressive']['fid']:.3f}"
    for args in (["runs"], ["show", NAME], ["compare", NAME]):
        assert fid in at80(*args, rd=evaluated), args


def test_bare_stepadapt_lists_commands_in_workflow_order():
    p = run_cli()
    out = p.stdout + p.stderr  # bare: the help (click prints it on stderr with exit 2 in newer versions)
    names = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert names.index("run") < names.index("train") < names.index("eval") < names.index("runs")
    assert names.index("runs") < names.index("rm") < names.index("info")


def test_report_leads_with_the_verdict_and_goes_into_one_file(evaluated):
    """The report's first thing is the verdict's badge and the bottom line with the per-group pattern; the
    facts say the run time, the command and the git state; --self-contained inlines every image; --open on a
    machine without a desktop says where the page is instead of failing."""
    import base64
    import os
    import re

    env = {k: "" for k in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    p = run_cli("report", NAME, "--self-contained", "--open", "--runs-dir", evaluated, env=env, check=0)
    assert "no browser to open it here" in p.stderr
    folder = evaluated / NAME / "report"
    page = (folder / "index.html").read_text()
    body = page.split("<body>", 1)[1]
    assert body.index('class="badge') < body.index("Table 1 style") and body.index("badge") < body.index("preset")
    assert "Per group against the control" in body and "run time" in body and "command <code>stepadapt " in body
    assert "white-space:nowrap" in page and "| reason |" not in (folder / "report.md").read_text()
    assert "verdicts above are paired" in body
    one = (folder / "standalone.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', one)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:4] == b"\x89PNG"
    assert len(srcs) == len(re.findall(r"<img ", page)) and not os.path.isabs(srcs[0])
