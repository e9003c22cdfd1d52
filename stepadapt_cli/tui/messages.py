"""Messages from the app's data worker to the UI thread."""

from __future__ import annotations

from textual.message import Message


class Snapshot(Message):
    """Fresh data for the view ``key`` (``("runs",)``, ``("run", name)``, ``("job", id)``, ``("proxy", name)``),
    read by the worker thread with its own store connection."""

    def __init__(self, key: tuple, data) -> None:
        super().__init__()
        self.key = key
        self.data = data
