"""MACs budget per timestep from SNR (paper Sec. 4.1) and the grouping of timesteps (Sec. 4.2).

Eq. 7   SNR(t) = 10 log10( alpha_bar_t / (1 - alpha_bar_t) )                       [dB]
Eq. 8   SNR_n = (-SNR - mean(-SNR)) / std(-SNR)
        Ratio = (SNR_n - min SNR_n) / (max SNR_n - min SNR_n)
        FLOPs(t) = (k + (1 - k) Ratio(t)) F
Eq. 9   as printed: FLOPs_g(i) = (i/N + (N - i)/N k) F, 0 <= i < N, the upper limit of group i
Eq. 10  T(i) = { t | v(i) < FLOPs(t) <= w(i) },  v(0) = 0, v(i) = FLOPs_g(i-1), w(i) = FLOPs_g(i)

Read literally, Eq. 9 gives group 0 the upper limit kF and group N-1 the limit (k + (1-k)(N-1)/N) F, so
the timesteps with FLOPs(t) in (FLOPs_g(N-1), F], the hardest ones including t = T-1, fall in no group.
We use the upper limit w(i) = (k + (1-k)(i+1)/N) F for group i: the N intervals then tile [kF, F] and
every timestep lands in exactly one group (group 0 also takes FLOPs(t) = kF, since v(0) = 0).

A group's budget is its upper limit w(i). Groups can be empty: with IDDPM's cosine schedule and T = 4000,
beta_{T-1} is clipped to 0.999, so SNR(T-1) is an outlier far below SNR(T-2); after the min-max
normalisation of Eq. 8 t = T-1 alone reaches the top interval and the intervals just below it hold
no timestep. Empty groups are reported and skipped (no model is trained for them).

Other kinds (paper Table 3 and an extra):
  constant     FLOPs(t) = (1 + k)/2 F for all t (the mean of the linear kinds), N groups of equal size
  increasing   FLOPs(t) rises linearly from kF at t = 0 to F at t = T-1, grouped by Eq. 10
  decreasing   FLOPs(t) falls linearly from F at t = 0 to kF at t = T-1, grouped by Eq. 10
  equal        the SNR budget of Eq. 8, but N groups with the same number of timesteps each;
               a group's budget is the largest FLOPs(t) among its timesteps
  snr-reversed Eq. 8 mirrored: FLOPs(t) = (k + (1 - k)(1 - Ratio(t))) F, the smallest budget at the
               high-noise end instead of the low-noise end (as T-Stitch and DyDiT shrink the early,
               noisy steps), grouped by Eq. 10
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from core.names import SCHEDULE_KINDS


def snr_db(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Eq. 7."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    return 10.0 * np.log10(ab / (1.0 - ab))


def snr_ratio(snr: np.ndarray) -> np.ndarray:
    """Eq. 8 without the final mapping: normalised -SNR, min-max scaled to [0, 1]."""
    neg = -np.asarray(snr, dtype=np.float64)
    std = neg.std()
    snr_n = (neg - neg.mean()) / (std if std > 0 else 1.0)
    span = snr_n.max() - snr_n.min()
    return (snr_n - snr_n.min()) / span if span > 0 else np.zeros_like(snr_n)


def budget_ratios(alphas_cumprod: np.ndarray, kind: str = "snr", k: float = 0.5) -> np.ndarray:
    """FLOPs(t) / F for every timestep, in [k, 1]."""
    T = len(alphas_cumprod)
    lin = np.linspace(0.0, 1.0, T) if T > 1 else np.zeros(1)
    if kind in ("snr", "equal"):
        ratio = snr_ratio(snr_db(alphas_cumprod))
    elif kind == "constant":
        return np.full(T, (1.0 + k) / 2.0)
    elif kind == "increasing":
        ratio = lin
    elif kind == "decreasing":
        ratio = lin[::-1].copy()
    elif kind == "snr-reversed":
        ratio = 1.0 - snr_ratio(snr_db(alphas_cumprod))
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    return k + (1.0 - k) * ratio


def interval_index(ratio: np.ndarray, k: float, n: int) -> np.ndarray:
    """Eq. 10 with upper limits w(i) = k + (1-k)(i+1)/N: the group i with w(i-1) < ratio <= w(i)."""
    if k >= 1.0:
        return np.zeros(len(ratio), dtype=np.int64)
    pos = (np.asarray(ratio) - k) / (1.0 - k) * n  # in [0, N]
    # ceil(pos) - 1, with a little slack so that values on a boundary stay in the lower group despite rounding
    idx = np.ceil(pos - 1e-9).astype(np.int64) - 1
    return np.clip(idx, 0, n - 1)


@dataclass
class Group:
    index: int
    t_start: Optional[int]
    t_end: Optional[int]
    size: int
    budget_ratio: float
    budget_macs: Optional[int]
    snr_min: Optional[float]
    snr_max: Optional[float]
    timesteps: list

    def to_json(self, with_timesteps: bool = False) -> dict:
        d = asdict(self)
        if not with_timesteps:
            d.pop("timesteps")
        return d


@dataclass
class Schedule:
    kind: str
    k: float
    n_groups: int
    num_timesteps: int
    full_macs: Optional[int]
    snr: np.ndarray  # [T] dB
    ratio: np.ndarray  # [T] budget ratio FLOPs(t)/F
    group_of: np.ndarray  # [T] group index of each timestep
    groups: list  # [Group] * N, empty ones included

    @property
    def nonempty(self) -> list:
        return [g for g in self.groups if g.size > 0]

    @property
    def avg_budget_ratio(self) -> float:
        """Timestep-weighted mean of the group budgets over all T (what the groups may spend on average)."""
        return float(np.mean([self.groups[g].budget_ratio for g in self.group_of]))

    def to_json(self, with_timesteps: bool = False) -> dict:
        return {
            "kind": self.kind,
            "k": self.k,
            "n_groups": self.n_groups,
            "num_timesteps": self.num_timesteps,
            "full_macs": self.full_macs,
            "avg_budget_ratio": self.avg_budget_ratio,
            "avg_budget_macs": None if self.full_macs is None else int(round(self.avg_budget_ratio * self.full_macs)),
            "empty_groups": [g.index for g in self.groups if g.size == 0],
            "groups": [g.to_json(with_timesteps) for g in self.groups],
        }


def make_schedule(
    alphas_cumprod: np.ndarray, kind: str = "snr", k: float = 0.5, n_groups: int = 10, full_macs: Optional[int] = None
) -> Schedule:
    """Budgets per timestep and their grouping; see the module docstring for each kind."""
    if not 0 < k <= 1:
        raise ValueError("k must be in (0, 1]")
    if n_groups < 1:
        raise ValueError("the number of groups must be >= 1")
    T = len(alphas_cumprod)
    snr = snr_db(alphas_cumprod)
    ratio = budget_ratios(alphas_cumprod, kind, k)
    if kind in ("equal", "constant"):
        group_of = np.minimum(np.arange(T) * n_groups // T, n_groups - 1)
        limits = [float(ratio[group_of == i].max()) if (group_of == i).any() else float("nan") for i in range(n_groups)]
    else:
        group_of = interval_index(ratio, k, n_groups)
        limits = [k + (1.0 - k) * (i + 1) / n_groups for i in range(n_groups)]
    groups = []
    for i in range(n_groups):
        ts = np.nonzero(group_of == i)[0]
        budget = limits[i]
        if not math.isfinite(budget):
            budget = k + (1.0 - k) * (i + 1) / n_groups
        groups.append(
            Group(
                index=i,
                t_start=int(ts.min()) if len(ts) else None,
                t_end=int(ts.max()) if len(ts) else None,
                size=int(len(ts)),
                budget_ratio=float(budget),
                budget_macs=None if full_macs is None else int(round(budget * full_macs)),
                snr_min=float(snr[ts].min()) if len(ts) else None,
                snr_max=float(snr[ts].max()) if len(ts) else None,
                timesteps=[int(t) for t in ts],
            )
        )
    return Schedule(kind, k, n_groups, T, full_macs, snr, ratio, group_of, groups)


def schedule_from_config(cfg: dict, full_macs: Optional[int] = None) -> Schedule:
    from core.model.betas import alphas_cumprod

    s = cfg["schedule"]
    return make_schedule(alphas_cumprod(cfg), s["kind"], s["k"], s["groups"], full_macs)


def plot_schedule(sched: Schedule, path) -> None:
    """SNR(t) and budget(t) over t, with the groups shaded and their budgets drawn as steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(sched.num_timesteps)
    fig, ax1 = plt.subplots(figsize=(9, 4.9), dpi=110)
    ax1.plot(t, sched.snr, color="tab:blue", lw=1.5, label="SNR(t) [dB] (Eq. 7)")
    ax1.set_xlabel("timestep t")
    ax1.set_ylabel("SNR [dB]", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(t, sched.ratio, color="tab:red", lw=1.5, label="budget FLOPs(t)/F (Eq. 8)")
    gb = np.array([sched.groups[g].budget_ratio for g in sched.group_of])
    ax2.step(t, gb, where="mid", color="black", lw=1.0, ls="--", label="group budget (upper limit)")
    ax2.set_ylabel("MACs budget / F", color="tab:red")
    ax2.set_ylim(min(sched.k, sched.ratio.min()) - 0.05, 1.05)
    import matplotlib.transforms as mtransforms

    above = mtransforms.blended_transform_factory(ax2.transData, ax2.transAxes)  # x in t, y above the frame
    last, gap = [], 0.025 * sched.num_timesteps  # per row of labels, the last label's x
    for g in sched.nonempty:
        if g.index % 2 == 0:
            ax1.axvspan(g.t_start - 0.5, g.t_end + 0.5, color="0.9", zorder=0)
        ax1.axvline(g.t_start - 0.5, color="0.6", lw=0.6)
        x = (g.t_start + g.t_end) / 2
        row = next((r for r, prev in enumerate(last) if x - prev >= gap), len(last))  # narrow groups stack up
        last[row : row + 1] = [x]
        ax2.text(x, 1.01 + 0.045 * row, str(g.index), ha="center", va="bottom", fontsize=7, transform=above)
    empty = [g.index for g in sched.groups if g.size == 0]
    title = (
        f"{sched.kind} schedule, k={sched.k}, N={sched.n_groups}, T={sched.num_timesteps}; "
        f"avg budget {sched.avg_budget_ratio:.3f} F"
    )
    if empty:
        title += f"; empty groups: {', '.join(map(str, empty))}"
    ax1.set_title(title, fontsize=9, pad=8 + 11 * len(last))
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax1.legend(
        lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False
    )  # under the axes: inside, it covered the budget curve's low end
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- a run's schedule and its timestep groups --------------------------------------------------------
def run_schedule(run, cfg: Optional[dict] = None) -> Schedule:
    """The run's schedule, with budgets in MACs of its base architecture; saved once as ``schedule.json``
    (a later call takes the saved full MACs instead of counting again, and checks the saved groups still
    match the config)."""
    import json

    from core.config import model_arch
    from core.errors import UserError
    from core.runs import atomic_write_json

    cfg = cfg or run.config
    path = run.schedule_file()
    old = json.loads(path.read_text()) if path.exists() else None
    if old and old.get("full_macs"):  # counted when it was saved: the run's architecture does not change
        full = old["full_macs"]
    else:  # torch: only the first time
        from core.model.macs import count
        from core.model.unet import build_unet

        m = cfg["model"]
        full = count(build_unet(model_arch(cfg)), m["image_size"], m["in_channels"])["macs"]
    sched = schedule_from_config(cfg, full)
    data = sched.to_json(with_timesteps=True)
    if old:
        if old["groups"] != data["groups"]:
            raise UserError(
                f"{path} does not match the run's config (was the schedule changed?); "
                "start a new run for a new schedule"
            )
    else:
        atomic_write_json(data, path)
    return sched


def parse_groups(spec: Optional[str], sched: Schedule) -> list[int]:
    """``all`` or ``i,j,...``: the selected non-empty groups (empty ones are skipped)."""
    from core.errors import UserError

    if spec in ("all", "", None):
        return [g.index for g in sched.nonempty]
    try:
        wanted = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"bad --groups {spec!r}: use all or comma-separated group indices, e.g. 0,3,9") from None
    bad = [g for g in wanted if not 0 <= g < sched.n_groups]
    if bad:
        raise UserError(f"bad --groups {spec!r}: groups are 0..{sched.n_groups - 1}")
    return [g for g in wanted if sched.groups[g].size > 0]


def nonempty_groups(run) -> Optional[list[int]]:
    """The non-empty group indices of the run's saved ``schedule.json`` (no torch), or None before it exists."""
    import json

    try:
        data = json.loads(run.schedule_file().read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return [g["index"] for g in data["groups"] if g["size"] > 0]
