"""Data files that ship with the tool: the proxy's prompt templates and the study definitions.

In the repository they sit at its top (``prompts/``, ``studies/``); an installed wheel carries them inside the
package (``core/prompts``, ``core/studies``, pyproject.toml's package-dir). Found through importlib.resources
first, so a non-editable install works from any folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _shipped(name: str) -> Path:
    installed = resources.files("core") / name
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[1] / name  # a checkout (editable install, or tests from the repo)


def prompts_dir() -> Path:
    """The proxy's prompt templates (``proxy_system.md``, ``proxy_round.md``, ``proxy_retry.md``)."""
    return _shipped("prompts")


def studies_dir() -> Path:
    """The study definitions, one YAML file per study."""
    return _shipped("studies")
