"""Every table the CLI prints (rich), one module per kind of view. Commands gather data and call these;
``--json`` prints the same data instead."""

from .common import verdict_line
from .inspection import (
    print_llm_call,
    print_llm_calls,
    print_macs,
    print_preset,
    print_prune_records,
    print_schedule,
    print_show,
)
from .results import (
    print_comparison,
    print_eval,
    print_fid_curve,
    print_image_scores,
    print_loss_table,
    print_study,
    print_study_list,
    print_swap,
)
from .runs import print_runs

__all__ = [
    "print_comparison",
    "print_eval",
    "print_fid_curve",
    "print_image_scores",
    "print_llm_call",
    "print_llm_calls",
    "print_loss_table",
    "print_macs",
    "print_preset",
    "print_prune_records",
    "print_runs",
    "print_schedule",
    "print_show",
    "print_study",
    "print_study_list",
    "print_swap",
    "verdict_line",
]
