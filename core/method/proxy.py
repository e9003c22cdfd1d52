"""Proxy pruning (paper Eq. 16/17): an LLM asked round after round how much of each unit to keep,
fed a memory bank of earlier proposals and their measured loss.

Eq. 16: theta' = GPT(theta, T, D, S, M), theta' a subset of theta, s.t. FLOPs(U_{theta - theta'}) <= f
Eq. 17: M_{i+1} = M_i  U  (theta'_i, Loss(U_{theta - theta'_i}(T, D, S)))

theta' is the proposal of round i (here: keep ratios per unit, made a plan), f the group's MACs budget, T the
group's timesteps, D held-out images, S the settings, and M the memory bank (``memory`` below: every
proposal with its MACs and its measured loss, or why it was rejected).

Round r: the prompt (templates in ``prompts/``) carries the units (name, kind, size, MACs share, magnitude
and Taylor hints), the budget, the group's timesteps and SNR, and the memory bank. The answer must be a
JSON object ``{"keep": {unit: ratio in (0, 1]}}``; it is parsed (code fences and surrounding prose are
tolerated), validated (schema, known names, bounds, size) and priced with the exact MAC model: over budget
is rejected, under budget is topped up by giving back the most important blocks. A rejected answer goes
back to the model with the reason, up to ``retries`` times. An accepted proposal becomes a plan (within each unit the
positions with the lowest first-order Taylor importance at the group's timesteps go first; magnitude when
no data is given), is applied to a copy of the base and its held-out loss at the group's
timesteps is measured and put in the memory bank. After ``rounds`` rounds the accepted candidate with the
lowest loss wins; with none, a named baseline method prunes the group instead and the report says so.

Every call and every round outcome is recorded in the store. Sources of answers: ``live`` (the LLM),
``cache`` (a recorded live answer to an identical request key, from any run of this store; never an imported
one), ``replay`` (the recorded answers of another run, in order, each checked against the request key of the call
being made; imported ones too).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from core.errors import ReplayMismatch, UserError
from core.method.llm import LOCAL_MODEL, LLMError, complete, request_key
from core.method.prune import Pruner, counts_for_ratio, greedy_refill, held_out_loss, plan_from_counts
from core.resources import prompts_dir

PROMPTS_DIR = prompts_dir()  # the shipped prompts (core/resources.py)
MAX_ANSWER_CHARS = 100_000
MAX_ANSWER_DEPTH = 32  # nesting of {...} and [...]; a real answer needs 2


@dataclass
class ProxySettings:
    model: str = LOCAL_MODEL
    api_base: Optional[str] = None
    rounds: int = 5
    proposals: int = 1  # candidates per round, each measured (the paper's Fig. 7 uses 3)
    retries: int = 2  # re-asks after a rejected answer, per proposal
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 4096
    timeout: float = 120.0
    call_retries: int = 3  # transport retries (timeouts, 429, 5xx) inside one call
    backoff: float = 2.0
    fallback: str = "magnitude"
    prompts_dir: Path = PROMPTS_DIR

    def params(self) -> dict:
        return {"temperature": self.temperature, "seed": self.seed, "max_tokens": self.max_tokens}

    def describe(self) -> dict:
        out = {
            "method": "proxy",
            "llm": self.model,
            "rounds": self.rounds,
            "retries": self.retries,
            "temperature": self.temperature,
            "seed": self.seed,
            "prompts": prompts_hash(self.prompts_dir),
        }
        if self.proposals > 1:  # one proposal per round describes (and replays) as before
            out["proposals"] = self.proposals
        return out


def load_templates(prompts_dir: Path) -> dict[str, string.Template]:
    out = {}
    for name in ("proxy_system", "proxy_round", "proxy_retry"):
        p = Path(prompts_dir) / f"{name}.md"
        if not p.is_file():
            raise UserError(f"prompt template missing: {p}")
        out[name] = string.Template(p.read_text())
    return out


def prompts_hash(prompts_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("proxy_system", "proxy_round", "proxy_retry"):
        p = Path(prompts_dir) / f"{name}.md"
        h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- answers


def extract_json(text: str) -> dict:
    """The JSON object in an answer: the whole text, a fenced block, or the outermost {...} in prose."""
    if text is None or not text.strip():
        raise ValueError("empty answer")
    if len(text) > MAX_ANSWER_CHARS:
        raise ValueError(f"answer too long ({len(text)} characters; at most {MAX_ANSWER_CHARS})")
    if nesting_depth(text) > MAX_ANSWER_DEPTH:
        raise ValueError(f"answer nested more than {MAX_ANSWER_DEPTH} levels deep")
    candidates = [text.strip()]
    candidates += re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    i, j = text.find("{"), text.rfind("}")
    if 0 <= i < j:
        candidates.append(text[i : j + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise ValueError("no JSON object found in the answer")


def nesting_depth(text: str) -> int:
    """The deepest nesting of brackets outside JSON strings (a bound checked before any parser recurses)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}]":
            depth = max(0, depth - 1)
    return deepest


def validate_answer(obj: dict, units) -> dict[str, float]:
    """``{"keep": {unit: ratio}}`` -> keep ratios for known units, each in (0, 1]. Raises ValueError."""
    keep = obj.get("keep") if isinstance(obj, dict) else None
    if not isinstance(keep, dict) or not keep:
        raise ValueError('expected {"keep": {"<unit name>": <ratio>, ...}} with at least one unit')
    names = {u.name for u in units}
    unknown = sorted(set(keep) - names)
    if unknown:
        shown = ", ".join(repr(n[:60]) for n in unknown[:5])
        raise ValueError(f"unknown unit names: {shown}{' ...' if len(unknown) > 5 else ''}")
    out = {}
    for name, r in keep.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r != r:
            raise ValueError(f"keep ratio of {name!r} is not a number: {r!r}")
        if not 0 < r <= 1:
            raise ValueError(f"keep ratio of {name!r} must be in (0, 1], got {r}")
        out[name] = float(r)
    return out


# --------------------------------------------------------------------------- prompt state


def unit_hints(pruner: Pruner, magnitude: dict, taylor: Optional[dict]) -> list[dict]:
    total_taylor = sum(float(v.sum()) for v in taylor.values()) if taylor else 0.0
    out = []
    for u in pruner.units:
        m = magnitude[u.name].float()
        row = {
            "name": u.name,
            "kind": u.kind,
            "size": u.size,
            "blocks": u.blocks,
            "macs_share": round(pruner.mac_model.unit_share(u.name), 5),
            "magnitude_spread": round(float(m.std() / m.mean().clamp(min=1e-12)), 4) if u.size > 1 else 0.0,
        }
        if taylor:
            row["taylor_share"] = round(float(taylor[u.name].sum()) / max(total_taylor, 1e-30), 5)
        out.append(row)
    return out


def _fmt(x: float) -> str:
    return f"{x:.4f}"


@dataclass
class Replay:
    """Recorded calls of another run for one group, consumed in order."""

    calls: list
    source_run: str
    pos: int = 0

    def next(self) -> Optional[dict]:
        if self.pos >= len(self.calls):
            return None
        c = self.calls[self.pos]
        self.pos += 1
        return c


def _difference(rec: dict, model: str, messages: list, params: dict) -> str:
    if rec.get("model_asked") != model:
        return f"model {model!r} was {rec.get('model_asked')!r}"
    old = rec.get("messages") or []
    for i, (a, b) in enumerate(zip(old, messages)):
        if a != b:
            ta, tb = a.get("content", ""), b.get("content", "")
            k = next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
            return (
                f"message {i} ({b.get('role')}) differs at character {k}: "
                f"recorded {ta[max(0, k - 30) : k + 40]!r}, now {tb[max(0, k - 30) : k + 40]!r}"
            )
    if len(old) != len(messages):
        return f"{len(messages)} messages, recorded {len(old)}"
    return f"parameters {params} were {rec.get('params')}"


def cached_answer(store, key: str) -> Optional[dict]:
    """The earliest successful answer this store's LLM gave to request ``key`` (source ``live``, from any run).
    Answers copied from elsewhere (imported, or replayed from an import) are never served to a new request."""
    return next(
        (
            c
            for c in store.same_request(key)
            if c.get("source") == "live" and c.get("error") is None and c.get("response_text") is not None
        ),
        None,
    )


@dataclass
class ProxyRun:
    """One group's proxy search."""

    pruner: Pruner
    budget_macs: float
    ctx: object  # LossContext
    settings: ProxySettings
    store: object  # where calls and rounds are written: the Store, or a job's Journal
    run: str
    group: int
    group_info: dict  # t_start, t_end, snr_min, snr_max, num_timesteps
    mode: str = "live"  # live | replay | compare
    replay: Optional[Replay] = None
    on_miss: str = "fail"  # fail | live (replay only)
    use_cache: bool = False
    log: Callable[[str], None] = print
    seq: int = 0
    diverged_at: Optional[int] = None
    sources: dict = field(default_factory=dict)
    session: str = field(default_factory=lambda: __import__("uuid").uuid4().hex)
    cache: object = None  # the Store that ``use_cache`` reads (default: ``store``)

    def ask(self, rnd: int, attempt: int, messages: list) -> dict:
        """One answer for ``messages``: replayed, cached or live; recorded in the store. Returns the row."""
        s = self.settings
        params = s.params()
        key = request_key(s.model, messages, params)
        row = {
            "run": self.run,
            "group_index": self.group,
            "session": self.session,
            "round": rnd,
            "seq": self.seq,
            "attempt": attempt,
            "model_asked": s.model,
            "messages": messages,
            "params": params,
            "request_key": key,
        }
        self.seq += 1
        rec = None
        if self.mode == "replay" and self.diverged_at is None:
            rec = self.replay.next()
            if rec is None or rec["request_key"] != key:
                what = "the recording has no more calls" if rec is None else _difference(rec, s.model, messages, params)
                if self.on_miss != "live":
                    raise ReplayMismatch(
                        f"replay of {self.replay.source_run} diverges at group {self.group} "
                        f"round {rnd + 1} (call {self.seq}): {what}"
                    )
                self.diverged_at = rnd + 1
                self.log(f"group {self.group}: replay diverges at round {rnd + 1} ({what}); asking the LLM from here")
                rec = None
            else:
                row["source"] = "replay"
        if rec is None and self.use_cache:
            rec = cached_answer(self.cache or self.store, key)
            if rec is not None:
                row["source"] = "cache"
        if rec is not None:
            row.update(
                {
                    k: rec.get(k)
                    for k in (
                        "model_resolved",
                        "response_text",
                        "error",
                        "prompt_tokens",
                        "completion_tokens",
                        "cost",
                        "system_fingerprint",
                    )
                }
            )
            row["latency_s"] = 0.0
            row["linked_call"] = rec["id"]
        else:
            row["source"] = "live"
            if self.mode == "compare" and self.replay is not None:
                orig = self.replay.next()
                row["linked_call"] = orig["id"] if orig else None
            try:
                rep = complete(
                    s.model,
                    messages,
                    params,
                    api_base=s.api_base,
                    timeout=s.timeout,
                    retries=s.call_retries,
                    backoff=s.backoff,
                )
                row.update(
                    {
                        "model_resolved": rep.model_resolved,
                        "response_text": rep.text,
                        "latency_s": rep.latency_s,
                        "prompt_tokens": rep.prompt_tokens,
                        "completion_tokens": rep.completion_tokens,
                        "cost": rep.cost,
                        "system_fingerprint": rep.system_fingerprint,
                    }
                )
            except LLMError as e:
                row.update({"error": str(e), "response_text": None})
        self.sources[row["source"]] = self.sources.get(row["source"], 0) + 1
        return row

    def search(self):
        """Run the rounds; returns (plan, report dict for the proxy part)."""
        from core.method.importance import MagnitudeImportance, TaylorImportance

        s, pr = self.settings, self.pruner
        self.tpl = load_templates(s.prompts_dir)
        magnitude = pr.scores(MagnitudeImportance())
        taylor = pr.scores(TaylorImportance(), self.ctx) if self.ctx is not None else None
        self.hints = unit_hints(pr, magnitude, taylor)
        self.choose = taylor if taylor is not None else magnitude  # which positions of a unit go first
        self.base_loss = held_out_loss(pr.base, self.ctx)
        memory, candidates = [], []  # M of Eq. 17, and the accepted candidates
        for rnd in range(s.rounds):
            bank = list(memory)  # every proposal of a round sees the memory as the round began
            for prop in range(s.proposals):
                outcome = self._propose(rnd, self._prompt(rnd, bank, prop), memory)
                if outcome is None:
                    self._record_round(rnd, {"accepted": 0, "reason": "no valid answer"})
                    memory.append(
                        {
                            "round": rnd,
                            "keep": None,
                            "macs_ratio": None,
                            "loss": None,
                            "accepted": False,
                            "reason": "no valid answer",
                        }
                    )
                    continue
                candidates.append(self._measure(rnd, *outcome, memory))
        info = {
            "rounds": s.rounds,
            "memory": memory,
            "base_loss": self.base_loss,
            "sources": self.sources,
            "diverged_at": self.diverged_at,
            "replay_of": self.replay.source_run if self.replay else None,
            "llm": s.model,
            "session": self.session,
        }
        if not candidates:
            return None, info
        loss, rnd, plan, macs = min(candidates, key=lambda c: (c[0], c[1]))
        info["winner_round"] = rnd
        return plan, info

    def _prompt(self, rnd: int, memory: list, proposal: int = 0) -> list:
        """The messages of round ``rnd``: the system prompt and the round's state with the memory bank (and,
        with several proposals per round, which proposal this is: each is its own request)."""
        F, g = self.pruner.full["macs"], self.group_info
        state = {"budget_ratio": round(self.budget_macs / F, 6), "units": self.hints, "memory": memory}
        if self.settings.proposals > 1:
            state.update(proposal=proposal + 1, proposals=self.settings.proposals)
        user = self.tpl["proxy_round"].substitute(
            round=rnd + 1,
            rounds=self.settings.rounds,
            budget_gmacs=_fmt(self.budget_macs / 1e9),
            budget_pct=f"{100 * self.budget_macs / F:.1f}",
            full_gmacs=_fmt(F / 1e9),
            t_start=g["t_start"],
            t_end=g["t_end"],
            num_timesteps=g["num_timesteps"],
            snr_min=f"{g['snr_min']:.1f}",
            snr_max=f"{g['snr_max']:.1f}",
            base_loss=_fmt(self.base_loss),
            state=json.dumps(state, indent=1, sort_keys=True),
        )
        return [{"role": "system", "content": self.tpl["proxy_system"].substitute()}, {"role": "user", "content": user}]

    def _propose(self, rnd: int, messages: list, memory: list) -> Optional[tuple]:
        """Ask until an answer is valid (re-asking with the reason, up to ``retries`` times); every call is
        recorded. Returns (keep, counts, call id) or None."""
        for attempt in range(self.settings.retries + 1):
            row = self.ask(rnd, attempt, messages)
            call_id = self.store.log_call(row)  # recorded before it is parsed: nothing an answer does is lost
            if not row.get("error"):
                keep, counts = self._judge(rnd, row, memory)
                self.store.update_call(call_id, parsed=row.get("parsed"), validation_error=row.get("validation_error"))
            if row.get("parsed"):
                return keep, counts, call_id
            reason = row.get("validation_error") or row.get("error")
            self.log(f"group {self.group} round {rnd + 1}: answer rejected ({reason[:120]})")
            if row.get("error"):
                continue  # a transport failure: ask the same again
            messages = messages + [
                {"role": "assistant", "content": (row["response_text"] or "")[:2000]},
                {"role": "user", "content": self.tpl["proxy_retry"].substitute(error=reason)},
            ]
        return None

    def _judge(self, rnd: int, row: dict, memory: list) -> tuple:
        """Parse, validate and price an answer; sets ``parsed`` or ``validation_error`` on the call's row.
        An answer over the budget goes to the memory bank too (the model learns from it)."""
        pr, F = self.pruner, self.pruner.full["macs"]
        try:
            keep = validate_answer(extract_json(row["response_text"]), pr.units)
            counts = counts_for_ratio(pr.units, {n: 1 - k for n, k in keep.items()}, nearest=True)
            macs = pr.macs_of(counts)
            if macs > self.budget_macs:
                memory.append(
                    {
                        "round": rnd,
                        "keep": keep,
                        "macs_ratio": round(macs / F, 5),
                        "loss": None,
                        "accepted": False,
                        "reason": "over budget",
                    }
                )
                raise ValueError(
                    f"the proposal needs {macs / 1e9:.4f} GMACs ({100 * macs / F:.1f}% of the model), "
                    f"over the budget of {self.budget_macs / 1e9:.4f} GMACs "
                    f"({100 * self.budget_macs / F:.1f}%): keep less"
                )
        except ValueError as e:
            row["validation_error"] = str(e)
            return None, None
        row["parsed"] = {"keep": keep}
        return keep, counts

    def _measure(self, rnd: int, keep: dict, counts: dict, call_id: int, memory: list) -> tuple:
        """Top the proposal up to the budget, make it a plan, measure its held-out loss; into the memory bank
        (Eq. 17). Returns the candidate (loss, round, plan, MACs)."""
        pr, F = self.pruner, self.pruner.full["macs"]
        counts, macs = greedy_refill(pr.macs_of, pr.units, self.choose, counts, self.budget_macs)
        plan = plan_from_counts(pr.units, self.choose, counts)
        pruned = pr.apply(plan)
        loss = held_out_loss(pruned, self.ctx)
        params = sum(p.numel() for p in pruned.parameters())
        self._record_round(
            rnd,
            {
                "keep": keep,
                "plan": plan,
                "macs": macs,
                "params": params,
                "loss": loss,
                "accepted": 1,
                "reason": None,
                "call_id": call_id,
            },
        )
        memory.append(
            {"round": rnd, "keep": keep, "macs_ratio": round(macs / F, 5), "loss": round(loss, 6), "accepted": True}
        )
        self.log(f"group {self.group} round {rnd + 1}: {100 * macs / F:.1f}% of F, loss {loss:.5f}")
        return loss, rnd, plan, macs

    def _record_round(self, rnd: int, fields: dict) -> None:
        self.store.log_round(
            {"run": self.run, "group_index": self.group, "session": self.session, "round": rnd, **fields}
        )
