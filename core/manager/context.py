"""What a stage's ``work`` gets in its worker process: the run, its books (the job's journal, or the store when
the stage runs inside a command that owns it), its spec, the device, the heartbeat, a log function, and where
to record the files it produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from core.runs import Run
from core.store import Store


@dataclass
class WorkContext:
    run: Run
    store: Store  # or journal.Journal: the same writer methods
    job: dict
    device: object  # torch.device
    heartbeat: object  # jobs.Heartbeat, or anything with set(progress=, total=, message=)
    log: Callable[[str], None] = print
    artifacts: list = field(default_factory=list)

    @property
    def group(self) -> Optional[int]:
        return self.job["group_index"]

    def produced(self, path, kind: str) -> None:
        self.artifacts.append((path, kind))

    def log_status(self, msg: str) -> None:
        """A log line that is also the job's status message."""
        self.log(msg)
        self.heartbeat.set(message=msg[:120])

    def train_hooks(self, stage: str, group: Optional[int]) -> dict:
        """on_start/on_step/on_log for ``train``: progress to the heartbeat, logged values to ``metrics``."""
        run, job = self.run.name, self.job["id"]

        def on_start(step):
            dropped = self.store.drop_metrics_after(run, stage, group, step)
            if step:
                self.log(
                    f"resuming from step {step}"
                    + ("" if dropped is None else f" (dropped {dropped} metric rows logged after it)")
                )

        def on_step(done, total):
            self.heartbeat.set(progress=done, total=total)

        def on_log(rec):
            self.store.log_metrics(
                [
                    {
                        "run": run,
                        "job": job,
                        "stage": stage,
                        "group_index": group,
                        "step": rec["step"],
                        "key": k,
                        "value": float(v),
                        "time": rec["time"],
                    }
                    for k, v in rec.items()
                    if k not in ("step", "time")
                ]
            )
            self.heartbeat.set(message=f"loss {rec['loss']:.4f}, {rec['it_s']:.1f} it/s")

        return {"on_start": on_start, "on_step": on_step, "on_log": on_log}
