"""The proxy's searches of a run: every try of every round (its verdict, and for an accepted proposal the
measured MACs and loss, the chosen one marked), per group the unpruned loss and the losses round by round;
the detail pane opens at the selected answer, the prompt one key away."""

from __future__ import annotations

import json
import statistics

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from core.evaluation.text import fmt

from .view import BACK, HELP, QUIT, ViewScreen


class ProxyScreen(ViewScreen):
    BINDINGS = [
        BACK,
        Binding("enter", "show_call", "answer"),
        Binding("m", "toggle_prompt", "prompt/answer"),
        HELP,
        QUIT,
    ]

    def __init__(self, name: str):
        super().__init__(("proxy", name))
        self.run_name = name
        self.rows: dict = {}
        self.loaded, self.selected, self.with_prompt = False, None, False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="proxysum")
        yield DataTable(id="rounds", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="callbox"):
            yield Static("", id="call")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"proxy rounds of {self.run_name}"
        self.query_one(DataTable).add_columns("group", "round", "try", "verdict", "MACs G", "loss", "source", "reason")

    def show(self, data) -> None:
        rows = data["rows"]
        if self.loaded and [str(r["call"]["id"]) for r in rows] == list(self.rows):
            return  # nothing new: keep the cursor and the detail pane as they are
        self.loaded = True
        self.rows = {str(r["call"]["id"]): r for r in rows}
        self.query_one("#proxysum", Static).update(summary(rows, data["groups"]))
        t = self.query_one(DataTable)
        t.clear()
        if not rows:
            self.query_one("#call", Static).update(
                "No proxy rounds recorded for this run (pruned with another method, or not pruned yet)."
            )
        for r in rows:
            c, rnd = r["call"], r["round"]
            verdict = "* chosen" if r["chosen"] else r["verdict"]
            t.add_row(
                str(c["group_index"]),
                str(c["round"] + 1),
                str(c["attempt"] + 1),
                verdict,
                fmt(rnd.get("macs") and rnd["macs"] / 1e9),
                fmt(rnd.get("loss"), "{:.5f}"),
                c["source"],
                Text((c["error"] or c["validation_error"] or "")[:60]),
                key=str(c["id"]),
            )

    def action_show_call(self) -> None:
        t = self.query_one(DataTable)
        if t.row_count:
            self.show_call(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value)

    def action_toggle_prompt(self) -> None:
        """The prompt on top of the detail pane (where it can be seen, not below a long answer), or the answer
        alone; of the selected call, else of the row under the cursor."""
        self.with_prompt = not self.with_prompt
        t = self.query_one(DataTable)
        if self.selected:
            self.show_call(self.selected)
        elif t.row_count:
            self.show_call(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value)

    @on(DataTable.RowSelected)
    def selected_row(self, event: DataTable.RowSelected) -> None:
        self.show_call(event.row_key.value)

    def show_call(self, key: str) -> None:
        self.selected = key
        c = self.rows[key]["call"]
        head = (
            f"call {c['id']}  source {c['source']}  model {c['model_asked']}  "
            f"verdict {c['error'] or c['validation_error'] or 'accepted'}"
        )
        answer = f"--- answer ---\n{pretty(c['response_text'])}"
        if self.with_prompt:
            parts = [head, *[f"--- {m['role']} ---\n{m['content']}" for m in c["messages"]], answer]
        else:
            parts = [head, "(m: show the prompt above the answer)", answer]
        self.query_one("#call", Static).update(Text("\n".join(parts)))
        self.query_one("#callbox").scroll_home(animate=False)


def pretty(text) -> str:
    """An answer as indented JSON when it is JSON, else as it came."""
    if not text:
        return "(no answer)"
    try:
        return json.dumps(json.loads(text), indent=2)
    except (ValueError, RecursionError):
        return text


def summary(rows: list[dict], groups: dict) -> Text:
    """Per group: the unpruned model's loss and the accepted candidates' losses round by round (mean and spread
    when a round has several), the chosen one starred."""
    lines = []
    for g, info in sorted(groups.items()):
        by_round: dict = {}
        for r in rows:
            if r["call"]["group_index"] == g and r["round"].get("loss") is not None:
                by_round.setdefault(r["call"]["round"] + 1, []).append((r["round"]["loss"], r["chosen"]))
        cells = []
        for rnd, vals in sorted(by_round.items()):
            losses = [v for v, _ in vals]
            spread = f"±{statistics.pstdev(losses):.4f}" if len(losses) > 1 else ""
            cells.append(f"r{rnd} {statistics.mean(losses):.4f}{spread}{'*' if any(ch for _, ch in vals) else ''}")
        lines.append(f"g{g}: unpruned {fmt(info['base_loss'])}  " + "  ".join(cells))
    return Text("\n".join(lines))
