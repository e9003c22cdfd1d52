"""The plain entries of a model artifact or checkpoint (step, arch, plan, ...) read without torch.

``torch.save`` writes a zip whose ``*/data.pkl`` is a pickle of the saved dict in which every tensor is a
reference to a storage file beside it. Unpickling ``data.pkl`` with every torch object replaced by a stub and
every storage reference by None gives the dict's plain entries in milliseconds, without loading any tensor
or importing torch (about 3 s and 600 MB here): what listing runs needs to know which stages are done.

A runs folder is shared data, so this unpickler resolves no global of the file's choosing: torch's names become
an inert stub that keeps nothing and calls nothing, ``collections.OrderedDict`` (a state dict) is allowed, and
any other global (``os.system``, ``builtins.eval``) makes the file unreadable: ``{}``, never a call.
"""

from __future__ import annotations

import pickle
import zipfile
from typing import Optional

HEAVY = ("state", "model", "ema", "opt", "groups", "rng")  # tensors: never wanted here


class _Stub:
    """Whatever torch would rebuild (tensors, storages, dtypes, sizes): nothing of it is kept."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass


class _StateDict(dict):
    """A state dict's ``OrderedDict``: its entries kept, its ``_metadata`` attribute dropped."""

    def __setstate__(self, state):
        pass


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch" or module.startswith("torch."):
            return _Stub  # never torch's own object: the stub runs nothing
        if (module, name) == ("collections", "OrderedDict"):
            return _StateDict
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")  # the file reads as unreadable

    def persistent_load(self, pid):
        return None  # a tensor's storage: not read


def artifact_fields(path) -> dict:
    """The artifact's entries other than tensors (step, arch, plan, spec, ...); {} if the file is missing,
    unreadable or not a dict."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return {}
            with z.open(name) as f:
                art = _PlainUnpickler(f).load()
    except (
        OSError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ImportError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
    ):
        return {}
    if not isinstance(art, dict):
        return {}
    return {k: v for k, v in art.items() if k not in HEAVY}


def artifact_step(path) -> Optional[int]:
    """The training step recorded in a model artifact or checkpoint, or None if the file is missing or
    unreadable."""
    step = artifact_fields(path).get("step")
    try:
        return None if step is None else int(step)
    except (TypeError, ValueError):
        return None
