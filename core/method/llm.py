"""LLM calls through litellm, and the offline search policy registered as a litellm provider.

litellm is imported lazily (about 3 s) and with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` so that it never
fetches its price list. Any litellm model string works: ``openai/gpt-4o``, ``anthropic/...``,
``ollama/...``, or ``openai/NAME`` with ``api_base="http://HOST:PORT/v1"`` for any OpenAI-compatible server.

``stepadapt/local-search`` is not an LLM: it is a deterministic local search policy (see
``LocalSearchPolicy``) that reads the same prompt, including the memory bank, and answers in the same
format, so the offline default travels the same path and is recorded the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

LOCAL_MODEL = "stepadapt/local-search"
# parameters that change what a model answers: part of the request key (never keys, bases or timeouts)
OUTPUT_PARAMS = ("temperature", "seed", "max_tokens", "top_p", "response_format")


class LLMError(Exception):
    """A call that failed after its retries (timeout, HTTP error, refused)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class CallTimeout(Exception):
    """No complete answer before the call's deadline (a server may trickle bytes to defeat read timeouts)."""


def _before(deadline: float, fn):
    """``fn()`` in a daemon thread; ``CallTimeout`` if it has not returned by ``deadline`` (the thread is left
    to die with its connection). Ctrl-C still reaches the caller: it waits in an interruptible join."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller as it is
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="llm-call")
    t.start()
    t.join(max(0.0, deadline - time.time()))
    if t.is_alive():
        raise CallTimeout("no complete answer before the deadline")
    if "error" in box:
        raise box["error"]
    return box["value"]


def key_for_base(api_base: str) -> Optional[str]:
    """The key sent to an OpenAI-compatible server at ``api_base``: ``STEPADAPT_API_KEY`` (a key the user gives
    for that server), else ``OPENAI_API_KEY`` only when the server is OpenAI's own; never a provider's key to
    another host."""
    from urllib.parse import urlparse

    if os.environ.get("STEPADAPT_API_KEY"):
        return os.environ["STEPADAPT_API_KEY"]
    host = (urlparse(api_base).hostname or "").lower()
    if host == "api.openai.com" or host.endswith(".openai.com"):
        return os.environ.get("OPENAI_API_KEY")
    return None


SECRET_ENV = re.compile(r"(API_KEY|_TOKEN|_SECRET|_PASSWORD)$")
SECRET_TEXT = re.compile(
    r"(?i)\b(bearer\s+|authorization[\"']?\s*[:=]\s*[\"']?(bearer\s+)?|api[-_]?key[\"']?\s*[:=]\s*[\"']?)"
    r"[A-Za-z0-9._~+/=-]{8,}"
)


def secrets(extra: Optional[str] = None) -> list[str]:
    """Every secret the tool knows: keys passed to it, and provider keys and tokens in the environment."""
    found = [v for k, v in os.environ.items() if SECRET_ENV.search(k) and v and len(v) >= 8]
    return sorted({*found, *([extra] if extra and len(extra) >= 8 else [])}, key=len, reverse=True)


def scrub(text: Optional[str], extra: Optional[str] = None) -> Optional[str]:
    """``text`` with every known secret, and anything that looks like a bearer token or an API key, replaced
    by ``[redacted]``: nothing the tool records or prints carries a key."""
    if not text:
        return text
    for s in secrets(extra):
        text = text.replace(s, "[redacted]")
    return SECRET_TEXT.sub(lambda m: m.group(1) + "[redacted]", text)


def request_key(model: str, messages: list, params: dict) -> str:
    """sha256 of the canonical JSON of model, messages and the output-affecting params."""
    keep = {k: params[k] for k in OUTPUT_PARAMS if params.get(k) is not None}
    blob = json.dumps({"model": model, "messages": messages, "params": keep}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Reply:
    text: str
    model_resolved: str
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    cost: Optional[float] = None
    latency_s: float = 0.0
    system_fingerprint: Optional[str] = None
    attempts: list = field(default_factory=list)  # [{"error": ..., "wait_s": ...}] of failed attempts


_litellm = None


def _lib():
    global _litellm
    if _litellm is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # never fetch the price list
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        provider = {"provider": "stepadapt", "custom_handler": _local_handler()}
        if all(p.get("provider") != "stepadapt" for p in litellm.custom_provider_map):
            litellm.custom_provider_map = [*litellm.custom_provider_map, provider]
        _litellm = litellm
    return _litellm


def _retry_after(exc) -> Optional[float]:
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None) or {}
    try:
        val = headers.get("retry-after") or headers.get("Retry-After")
        return float(val) if val is not None else None
    except (TypeError, ValueError):
        return None


def complete(
    model: str,
    messages: list,
    params: dict,
    *,
    api_base: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: float = 120.0,
    retries: int = 3,
    backoff: float = 2.0,
    max_wait: float = 60.0,
) -> Reply:
    """One chat completion; retries timeouts, 429 (honouring Retry-After) and 5xx with backoff, all within
    ``timeout`` seconds from the start of the call: a deadline for the whole call, not per read."""
    if model == LOCAL_MODEL and not api_base:  # the offline policy: in-process, no litellm import (8 s a job)
        t0 = time.time()
        return Reply(text=local_answer(messages), model_resolved=LOCAL_MODEL, latency_s=time.time() - t0)
    lib = _lib()
    kwargs = {k: v for k, v in params.items() if v is not None}
    if api_base:
        kwargs["api_base"] = api_base
        api_key = api_key or key_for_base(api_base)
        kwargs["api_key"] = api_key or "none"
    elif api_key:
        kwargs["api_key"] = api_key
    attempts = []
    t0 = time.time()
    deadline = t0 + timeout
    for attempt in range(retries + 1):
        try:
            left = deadline - time.time()
            if left <= 0:
                raise CallTimeout(f"the call's {timeout:g} s are used up")
            resp = _before(
                deadline,
                lambda: lib.completion(
                    model=model, messages=messages, timeout=left, num_retries=0, max_retries=0, **kwargs
                ),
            )
            text = scrub(resp.choices[0].message.content or "", api_key)
            usage = getattr(resp, "usage", None)
            try:
                cost = float(lib.completion_cost(completion_response=resp))
            except Exception:  # litellm raises a bare Exception for a model without a price
                cost = None
            return Reply(
                text=text,
                model_resolved=getattr(resp, "model", None) or model,
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
                cost=cost,
                latency_s=time.time() - t0,
                attempts=attempts,
                system_fingerprint=getattr(resp, "system_fingerprint", None),
            )
        except Exception as e:  # the provider boundary: whatever litellm or a server does wrong is this call's error
            name = type(e).__name__
            status = getattr(e, "status_code", None)
            transient = (
                "Timeout" in name
                or "RateLimit" in name
                or "APIConnection" in name
                or "ServiceUnavailable" in name
                or "InternalServer" in name
                or (isinstance(status, int) and (status == 429 or status >= 500))
            )
            msg = scrub(str(e).strip().splitlines()[0][:300] if str(e).strip() else name, api_key)
            wait = _retry_after(e) if ("RateLimit" in name or status == 429) else None
            wait = min(max_wait, wait if wait is not None else backoff * (2**attempt), max(0.0, deadline - time.time()))
            attempts.append({"error": f"{name}: {msg}", "status": status, "wait_s": wait if transient else 0})
            if not transient or attempt == retries or time.time() + wait >= deadline:
                raise LLMError(name, msg) from None
            time.sleep(wait)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the offline policy

STATE_RE = re.compile(r"<state>\s*(\{.*?\})\s*</state>", re.S)


class LocalSearchPolicy:
    """A deterministic evolutionary search over per-unit keep ratios, driven by the memory bank.

    Round 0 proposes the same keep ratio for every unit, sized from the budget and the units' MACs
    shares; later rounds mutate the best candidate so far (lowest measured loss within budget):
    a few units get more channels and a few fewer, with step sizes shrinking over rounds. Candidates
    rejected for exceeding the budget shrink the proposal. The random generator is seeded by a hash of
    the prompt's state, so the same prompt always gets the same answer.
    """

    def answer(self, state: dict, retries: int = 0) -> dict:
        """``retries``: how many answers of this round were already rejected (each shrinks the proposal)."""
        units = state["units"]
        budget = state["budget_ratio"]
        memory = state.get("memory", [])
        seed = hashlib.sha256((json.dumps(state, sort_keys=True) + f"/{retries}").encode()).hexdigest()
        rnd = random.Random(seed)
        valid = [m for m in memory if m.get("accepted") and m.get("loss") is not None]
        over = sum(1 for m in memory if m.get("reason") == "over budget")
        shrink = 0.95 ** (over + retries)
        if not valid:
            keep = self._uniform_keep(units, budget) * shrink
            out = {u["name"]: max(0.05, keep) for u in units}
            if state.get("proposal", 1) > 1:  # several proposals per round: the others vary the uniform start
                for name in rnd.sample(sorted(out), k=max(1, len(out) // 4)):
                    out[name] = min(1.0, max(0.05, out[name] + rnd.choice((-1, 1)) * 0.1))
            return {"keep": {n: round(v, 4) for n, v in out.items()}, "note": "uniform start"}
        best = min(valid, key=lambda m: m["loss"])
        keep = {n: v * (0.95**retries) for n, v in best["keep"].items()}
        step = 0.2 / (1 + 0.3 * len(memory))
        names = [u["name"] for u in units]
        for name in rnd.sample(names, k=max(1, len(names) // 4)):
            keep[name] = min(1.0, max(0.05, keep.get(name, 1.0) + rnd.choice((-1, 1)) * step))
        return {"keep": {n: round(v, 4) for n, v in keep.items()}, "note": f"mutation of round {best['round'] + 1}"}

    @staticmethod
    def _uniform_keep(units, budget_ratio: float) -> float:
        # a layer's MACs scale with the product of its kept input and output fractions, so with one keep
        # ratio k for all units the model costs between k and k^2 of F: aim at k^1.5 = budget
        return min(1.0, max(0.05, budget_ratio ** (2 / 3)))


def local_answer(messages: list) -> str:
    """The offline policy's answer to a conversation: it reads the last ``<state>`` block of the user turns and
    counts its own earlier (rejected) answers."""
    text = "\n".join(m.get("content", "") for m in messages if m.get("role") == "user")
    found = STATE_RE.findall(text)
    retries = sum(1 for m in messages if m.get("role") == "assistant")
    if not found:
        return json.dumps({"error": "no <state> block in the prompt"})
    return json.dumps(LocalSearchPolicy().answer(json.loads(found[-1]), retries))


def _local_handler():
    """The offline policy as a litellm custom provider (``stepadapt/local-search`` through litellm itself, e.g.
    behind a proxy server); ``complete`` answers it in-process."""
    from litellm import CustomLLM, ModelResponse

    class LocalSearch(CustomLLM):
        def completion(self, model, messages, *args, **kwargs) -> ModelResponse:
            resp = ModelResponse()
            resp.model = LOCAL_MODEL
            resp.choices[0].message.content = local_answer(messages)
            return resp

    return LocalSearch()
