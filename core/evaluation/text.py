"""How the evaluation's numbers are written, one way everywhere (CLI tables, the TUI, the reports).
Imports nothing heavy: the listings use it."""

from __future__ import annotations

from typing import Optional, Sequence


def with_ci(value: Optional[float], ci: Optional[Sequence[float]], spec: str = "{:.3f}", scale: float = 1.0) -> str:
    """'1.234 [1.100, 1.400]': a value and its 95% interval ('-' when there is no value)."""
    if value is None:
        return "-"
    out = spec.format(value / scale)
    return out + (f" [{spec.format(ci[0] / scale)}, {spec.format(ci[1] / scale)}]" if ci else "")


def significance(diff_ci: Sequence[float]) -> str:
    """'lower' / 'higher' when the paired difference's 95% interval excludes zero, else 'same'."""
    return "lower" if diff_ci[1] < 0 else "higher" if diff_ci[0] > 0 else "same"


def change(ch: Optional[dict], spec: str = "{:+.1%}", missing: str = "-") -> str:
    """A relative loss change with its verdict: '+58.0% higher', '-3.1% same'."""
    return f"{spec.format(ch['rel'])} {significance(ch['ci'])}" if ch else missing
