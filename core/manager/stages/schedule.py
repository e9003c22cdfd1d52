"""The SNR schedule: a MACs budget per timestep and the timestep groups (``schedule.json``, ``schedule.png``)."""

from __future__ import annotations

NAME = "schedule"
GROUPED = False


def pending(run) -> list:
    return [] if run.schedule_file().exists() else [None]


def work(ctx) -> None:
    from core.method.schedule import plot_schedule, run_schedule

    sched = run_schedule(ctx.run)
    plot_schedule(sched, ctx.run.schedule_plot())
    ctx.log(
        f"schedule: {len(sched.nonempty)} non-empty groups of {sched.n_groups}; "
        f"average budget {sched.to_json()['avg_budget_ratio']:.4f} F"
    )
    ctx.produced(ctx.run.schedule_file(), "schedule")
    ctx.produced(ctx.run.schedule_plot(), "plot")
