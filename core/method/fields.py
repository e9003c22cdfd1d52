"""The plain entries of a model artifact or checkpoint (step, arch, plan, ...) read without torch.

``torch.save`` writes a zip whose ``*/data.pkl`` is a pickle of the saved dict in which every tensor is a
reference to a storage file beside it. Reading ``data.pkl``'s opcodes as data (``pickletools.genops``) and
building only plain values (dicts, lists, tuples, strings, numbers) gives the dict's plain entries in
milliseconds, without loading any tensor or importing torch (about 3 s and 600 MB here): what listing runs needs
to know which stages are done.

A runs folder is shared data, so nothing here unpickles: no global the file names is looked up, and nothing is
called. torch's globals and ``collections.OrderedDict``, and anything built from them (a tensor, a state dict),
become an inert ``OPAQUE`` marker; any other global (``os.system``, ``builtins.eval``) or an opcode outside the
plain set makes the file unreadable: ``{}``.
"""

from __future__ import annotations

import pickletools
import zipfile
from typing import Optional

HEAVY = ("state", "model", "ema", "opt", "groups", "rng")  # tensors: never wanted here
OPAQUE = object()  # what a global, or a call of one, stands for: never looked up, never called
_MARK = object()


class _Unreadable(Exception):
    pass


def _plain_value(data: bytes):
    """The value the pickle ``data`` describes, built from its opcodes alone (no unpickler runs)."""
    stack, memo = [], {}

    def pop_mark() -> list:
        i = len(stack) - 1 - stack[::-1].index(_MARK)
        items = stack[i + 1 :]
        del stack[i:]
        return items

    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return stack.pop()
        if name in ("MARK",):
            stack.append(_MARK)
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
            stack.append({} if name == "EMPTY_DICT" else [] if name == "EMPTY_LIST" else ())
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT", "INT", "LONG", "FLOAT"):
            stack.append(arg)
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINBYTES", "SHORT_BINBYTES"):
            stack.append(arg)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo[arg])
        elif name in ("APPEND", "APPENDS"):
            items = pop_mark() if name == "APPENDS" else [stack.pop()]
            if isinstance(stack[-1], list):
                stack[-1].extend(items)  # onto an OPAQUE object: dropped with it
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            _set(stack[-1], k, v)
        elif name == "SETITEMS":
            items = pop_mark()
            for k, v in zip(items[::2], items[1::2]):
                _set(stack[-1], k, v)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "STACK_GLOBAL":
                module, qual = stack[-2:]
                del stack[-2:]
            else:
                module, qual = arg.split(" ", 1)
            if not _known(str(module), str(qual)):
                raise _Unreadable(f"{module}.{qual}")  # not what torch.save writes: the file is unreadable
            stack.append(OPAQUE)  # a name, never looked up
        elif name in ("REDUCE", "NEWOBJ"):
            del stack[-2:]
            stack.append(OPAQUE)  # a call, never made
        elif name == "BUILD":
            stack.pop()  # the state of an object we did not build
        elif name == "BINPERSID":
            stack[-1] = OPAQUE  # a tensor's storage: not read
        elif name == "POP":
            stack.pop()
        else:
            raise _Unreadable(name)
    raise _Unreadable("no STOP")


def _known(module: str, name: str) -> bool:
    """The globals ``torch.save`` writes (torch's own, and a state dict's ``OrderedDict``)."""
    return module == "torch" or module.startswith("torch.") or (module, name) == ("collections", "OrderedDict")


def _set(target, key, value) -> None:
    if isinstance(target, dict):
        target[key] = value  # an OrderedDict (state dict) is an OPAQUE call: its items are dropped with it


def artifact_fields(path) -> dict:
    """The artifact's entries other than tensors (step, arch, plan, spec, ...); {} if the file is missing,
    unreadable or not a dict."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return {}
            art = _plain_value(z.read(name))
    except (
        OSError,
        zipfile.BadZipFile,
        _Unreadable,
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
