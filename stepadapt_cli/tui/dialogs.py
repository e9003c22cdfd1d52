"""Modal dialogs: a yes/no confirmation and the key help."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

HELP = """stepadapt tui - keys

runs screen   enter open run   / filter   s sort column   q quit
run screen    l job log (selected row)   p proxy rounds   k kill run   r resume run   escape back
job log       k kill job   escape back
proxy         enter show the answer   m prompt and answer   escape back
everywhere    ? this help   ctrl+q quit

Group rows: timestep range, budget (fraction of F), achieved MACs (fraction of F) after pruning,
job status, fine-tune step/total, current loss and a loss sparkline."""


class Confirm(ModalScreen[bool]):
    """Yes (y) or no (n, escape)."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class Help(ModalScreen[None]):
    """The keys of every screen."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")
