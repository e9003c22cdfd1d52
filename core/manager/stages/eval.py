"""Evaluation of the base and the progressive model (``eval.json``) and the run's report (``report/``)."""
from __future__ import annotations

NAME = "eval"
GROUPED = False


def pending(run) -> list:
    return [] if run.eval_file().exists() else [None]


def work(ctx) -> None:
    from core.evaluation.evaluate import evaluate_run
    from core.evaluation.report import write_report

    evaluate_run(ctx.run, ctx.device, log=ctx.log, progress=lambda d, t: ctx.heartbeat.set(progress=d, total=t))
    ctx.produced(ctx.run.eval_file(), "eval")
    html, _ = write_report(ctx.run, [], ctx.run.report_dir())
    ctx.log(f"report: {html}")
    ctx.produced(html, "report")
