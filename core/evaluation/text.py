"""How the evaluation's numbers are written, one way everywhere (CLI tables, the TUI, the reports).
Imports nothing heavy: the listings use it."""

from __future__ import annotations

from typing import Optional, Sequence

FID = "{:.3f}"  # FID and KID x1e3 everywhere (tables, the TUI, the reports): one precision


# a verdict as the words before what it is measured against ("... the base")
VERDICT_PHRASE = {
    "better": "better than",
    "worse": "worse than",
    "no significant difference": "not significantly different from",
}


def fmt(value: Optional[float], spec: str = "{:.4f}", scale: float = 1.0) -> str:
    """A number in ``spec`` (divided by ``scale``), or '-' when there is none."""
    return "-" if value is None else spec.format(value / scale)


def with_ci(value: Optional[float], ci: Optional[Sequence[float]], spec: str = "{:.3f}", scale: float = 1.0) -> str:
    """'1.234 [1.100, 1.400]': a value and its 95% interval ('-' when there is no value)."""
    if value is None:
        return "-"
    out = spec.format(value / scale)
    return out + (f" [{spec.format(ci[0] / scale)}, {spec.format(ci[1] / scale)}]" if ci else "")


def narrow_ci(value: Optional[float], ci: Optional[Sequence[float]], spec: str = FID, scale: float = 1.0) -> str:
    """'0.213±0.061': a value and the larger half-width of its 95% interval, for tables that must fit 80 columns
    (bootstrap intervals are not symmetric: the larger side is the honest one); '-' when there is no value."""
    if value is None:
        return "-"
    out = spec.format(value / scale)
    if not ci:
        return out
    half = max(value - ci[0], ci[1] - value, 0.0)
    return out + "±" + spec.format(half / scale)


def significance(diff_ci: Sequence[float]) -> str:
    """'lower' / 'higher' when the paired difference's 95% interval excludes zero, else 'same'."""
    return "lower" if diff_ci[1] < 0 else "higher" if diff_ci[0] > 0 else "same"


def change(ch: Optional[dict], spec: str = "{:+.1%}", missing: str = "-") -> str:
    """A relative loss change with its verdict: '+58.0% higher', '-3.1% same'."""
    return f"{spec.format(ch['rel'])} {significance(ch['ci'])}" if ch else missing


def verdict_text(c: dict, short: bool = False) -> str:
    """'progressive vs control: WORSE on FID, +0.31 [+0.12, +0.50] (95%, paired); 0.70x MACs', or with ``short``
    'progressive vs control: WORSE FID +0.31 [+0.12, +0.50]' (one line at 80 columns)."""
    primary = c.get("primary", "fid")
    d = c.get(primary)
    head = f"{c['model']} vs {c['against']}: "
    if not d:
        return head + "no sample metric" + ("" if short else f"; {c['macs_ratio']:.2f}x MACs")
    spec = "{:+.3f}" if primary == "fid" else "{:+.5f}"
    interval = f"{spec.format(d['diff'])} [{spec.format(d['ci'][0])}, {spec.format(d['ci'][1])}]"
    word = {"better": "BETTER", "worse": "WORSE"}.get(d["verdict"], "same" if short else "no significant difference")
    if short:
        return head + f"{word} {primary.upper()} {interval}"
    return (
        head + f"{word} on {primary.upper()}, {interval} (95%, {'paired' if d['paired'] else 'unpaired'}); "
        f"{c['macs_ratio']:.2f}x MACs"
    )


def bottom_line(comparisons: list[dict]) -> str:
    """One plain sentence on what a run's numbers say about the method (or '' without the comparisons)."""
    by = {(c["model"], c["against"]): c for c in comparisons}
    pc, pb = by.get(("progressive", "control")), by.get(("progressive", "base"))
    if not pb or not pb.get("verdict"):
        return ""
    word = VERDICT_PHRASE
    metric = pb["primary"].upper()
    text = f"The progressive model, at {pb['macs_ratio']:.2f}x the base's MACs, is {word[pb['verdict']]} the base"
    if pc and pc.get("verdict"):
        text += f" and {word[pc['verdict']]} its equal-compute control (the base trained on for the same steps)"
    text += f" on {metric} (95% intervals)."
    if pc and pc["verdict"] == "worse":
        text += " At this scale the method does not beat training the base for longer."
    elif pc and pc["verdict"] == "no significant difference":
        text += " It matches the control at lower cost; a larger sample count may separate them."
    elif pc and pc["verdict"] == "better" and pb["verdict"] == "better":
        text += " The method, not the extra steps, made the difference."
    elif pc and pc["verdict"] == "better":  # the extra steps made one network no better than the base either
        text += (
            " It beats the control but not the base: the extra steps did not improve one network either, so the "
            "base itself is the model to beat here."
        )
    alone = {"better": "better", "worse": "worse", "no significant difference": "not significantly different"}
    pu = by.get(("progressive", "uniform"))
    if pu and pu.get("verdict"):
        text += (
            f" Against one copy pruned to the same average MACs for all timesteps ({pu['macs_ratio']:.2f}x its "
            f"MACs, same steps) it is {alone[pu['verdict']]} on {metric}."
        )
    pd = by.get(("progressive", "dense-small"))
    if pd and pd.get("verdict"):
        text += (
            f" Against a narrower dense UNet of that cost trained from scratch as long ({pd['macs_ratio']:.2f}x "
            f"its MACs) it is {alone[pd['verdict']]} on {metric}."
        )
    return text


def group_pattern(table: list[dict], against: str = "control", t_start: Optional[dict] = None) -> str:
    """Where the progressive model's held-out loss differs from ``against``'s, group by group: 'Per group against
    the control (group 0: least noise): lower loss in groups 2, 3 (-3.1%, -2.0%), higher in groups 0, 1 (+12.0%,
    +4.2%): better at high noise, worse at low noise.' ('' without the per-group comparison). ``table``:
    ``evaluate.loss_table``'s rows; ``t_start``: each group's first timestep (the schedule's), which orders the
    groups by noise (a reversed schedule numbers them from the most noise); without it group 0 has the least."""
    rows = [t for t in table if t.get(f"vs_{against}")]
    if not rows:
        return ""
    side = {"lower": [], "higher": [], "same": []}
    for t in rows:
        ch = t[f"vs_{against}"]
        side[significance(ch["ci"])].append((t["group"], ch["rel"]))

    def part(word: str, items: list) -> str:
        gs = ", ".join(str(g) for g, _ in items)
        return f"{word} in group{'s' if len(items) > 1 else ''} {gs} ({', '.join(f'{r:+.1%}' for _, r in items)})"

    parts = [part(w, side[k]) for w, k in (("lower loss", "lower"), ("higher", "higher")) if side[k]]
    if side["same"]:
        parts.append(
            f"no significant difference in group{'s' if len(side['same']) > 1 else ''} "
            + ", ".join(str(g) for g, _ in side["same"])
        )
    noise = (lambda g: t_start.get(g, g)) if t_start else (lambda g: g)  # larger: more noise
    order = sorted((t["group"] for t in rows), key=noise)  # from the least noise to the most
    if order == sorted(order):
        where = f"group {order[0]}: least noise"
    elif order == sorted(order, reverse=True):
        where = f"group {order[0]}: least noise, group {order[-1]}: most"
    else:
        where = "from least to most noise: groups " + ", ".join(map(str, order))
    text = f"Per group against the {against} ({where}): " + "; ".join(parts)
    lo, hi = [noise(g) for g, _ in side["lower"]], [noise(g) for g, _ in side["higher"]]
    if lo and hi and min(lo) > max(hi):
        text += ": better at high noise, worse at low noise"
    elif lo and hi and max(lo) < min(hi):
        text += ": better at low noise, worse at high noise"
    return text + "."
