"""The base of every data screen: it names the view it shows and redraws from the app's snapshots."""

from __future__ import annotations

from textual.binding import Binding
from textual.screen import Screen

BACK = Binding("escape", "app.pop_screen", "back")
HELP = Binding("question_mark", "app.push_screen('help')", "help")
QUIT = Binding("q", "app.quit", "quit")  # on every screen


class ViewScreen(Screen):
    """A screen that shows one view (``key``); ``show(data)`` is called on the UI thread with fresh data."""

    def __init__(self, key: tuple):
        super().__init__()
        self.key = key

    def on_screen_resume(self) -> None:
        self.app.watch_view(self.key)

    def show(self, data) -> None:  # pragma: no cover - every screen overrides it
        raise NotImplementedError
