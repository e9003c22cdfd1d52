"""Modal dialogs: a yes/no confirmation and the key help."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

# how a binding's key is written in the help
_KEYS = {"slash": "/", "question_mark": "?", "enter": "enter", "escape": "escape"}
GROUP_ROWS = """Group rows: timestep range, budget (fraction of F), achieved MACs (fraction of F) after pruning,
job status, fine-tune step/total, current loss and a loss sparkline."""


def key_help(screens: list[tuple[str, type]], everywhere: list[Binding]) -> str:
    """The help screen's text, built from the screens' own bindings (so it cannot go stale): one line per
    screen, its keys in binding order, then the keys every screen has."""

    def keys(bindings) -> str:
        return "   ".join(
            f"{'/'.join(_KEYS.get(k, k) for k in b.key.split(','))} {b.description}"
            for b in bindings
            if b.description and b.key != "question_mark"
        )

    width = max(len(title) for title, _ in screens) + 2
    lines = ["stepadapt tui - keys", ""]
    lines += [f"{title:<{width}}{keys(cls.BINDINGS)}" for title, cls in screens]
    lines += [f"{'everywhere':<{width}}? this help   {keys(everywhere)}", "", GROUP_ROWS]
    return "\n".join(lines)


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


def confirm(screen, question: str, act) -> None:
    """Ask ``question`` over ``screen``; on yes, call ``act``."""

    def answer(yes: bool) -> None:
        if yes:
            act()

    screen.app.push_screen(Confirm(question), answer)


class Help(ModalScreen[None]):
    """The keys of every screen."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(self.text, id="help")
