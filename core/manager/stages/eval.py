"""Evaluation of the base and the progressive model (``eval.json``). The run's report (``report/``) reads the
store (proxy rounds, job timings), so the orchestrator that owns the store writes it after this stage
(``write_run_report``)."""

from __future__ import annotations

NAME = "eval"
GROUPED = False


def pending(run) -> list:
    """Done once eval.json has its comparisons: they are written when every model is measured, and an eval stopped
    part-way leaves the models it finished without them (a resume measures the rest)."""
    from core.runs import read_json

    return [] if "comparisons" in (read_json(run.eval_file()) or {}) else [None]  # None: missing or cut short


def work(ctx) -> None:
    from core.evaluation.evaluate import evaluate_run

    evaluate_run(ctx.run, ctx.device, log=ctx.log, progress=lambda d, t: ctx.heartbeat.set(progress=d, total=t))
    ctx.produced(ctx.run.eval_file(), "eval")


def write_run_report(run, store, log=print) -> None:
    """The run's report, written by the owner of the store once the evaluation is there."""
    from core.evaluation.report import write_report
    from core.runs import file_sha256

    html, _ = write_report(run, [], run.report_dir())
    store.add_artifact(
        {
            "run": run.name,
            "job": None,
            "path": str(html.relative_to(run.path)),
            "kind": "report",
            "sha256": file_sha256(html),
            "bytes": html.stat().st_size,
        }
    )
    log(f"report: {html}")
