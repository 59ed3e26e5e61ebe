"""The fault plan: knobs and injected failures of the emulator.

A plan has global knobs (token lifetimes, presigned-URL lifetime, IoTDA download window, ...) and a
list of :class:`Rule`. A rule is matched against the stable name of a route (``enos.download``,
``koodrive.obs``, ...; ``fnmatch`` patterns such as ``*`` or ``koodrive.*`` work) and fires with
probability ``rate`` (seeded RNG) at most ``count`` times (``None`` = unlimited). Kinds:

``latency``   sleep ``seconds`` before answering
``error``     answer HTTP ``status`` (default 503) with the family's error body
``throttle``  answer 429 with ``Retry-After: retry_after`` (IoTDA routes: 403 ``IOTDA.021101``,
              the code and status IoTDA documents for throttling, without ``Retry-After``)
``reset``     send ``after_bytes`` bytes of the body, then abort the connection
``truncate``  declare the full Content-Length, send only ``after_bytes`` bytes, then close
``patch``     a hostile JSON answer: in the route's JSON answer, every object that holds all of
              ``match`` (key: value; the top-level object when ``match`` is empty) gets the
              fields of ``set`` and loses the keys of ``unset``. The string ``"$seq"`` as a value
              of ``set`` becomes ``"seq-<n>"``, a new one each time (a cursor that never ends)
              ``grow`` ({key: n}) makes the list at ``key`` of those objects ``n`` items long
              (copies of its items in turn; the string fields named in ``unique`` of each copy
              get ``~<i>`` appended, the rest stay duplicates): 100,000-entry pages
``body``      answer HTTP ``status`` with ``text`` as the body (``content_type``): HTML where
              JSON was due, error bodies with newlines, ...
``resize``    the body is ``delta`` bytes longer (``fill`` repeated) or shorter (cut at the end),
              ``Content-Length`` and the end of ``Content-Range`` changed to match: a body
              longer or shorter than listed
``headers``   the answer's headers get ``headers`` (name: value); a ``Content-Length`` set
              here also cuts the body to it (the server never breaks its own framing): lying
              ``Content-Length`` / ``Content-Range`` / ``Content-Type``

The plan is a plain dataclass, loadable from JSON or TOML and changeable at run time through the
admin routes (see docs/emulator.md).
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import json
import random
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RULE_KINDS = (
    "latency",
    "error",
    "throttle",
    "reset",
    "truncate",
    "patch",
    "body",
    "resize",
    "headers",
)


class FaultPlanError(ValueError):
    """The plan (file or admin request) is malformed."""


@dataclass(slots=True)
class Rule:
    route: str = "*"
    kind: str = "error"
    rate: float = 1.0
    count: int | None = None
    seconds: float = 0.0
    status: int = 503
    retry_after: int = 1
    after_bytes: int = 0
    match: dict[str, Any] | None = None  # patch: the objects to change
    set: dict[str, Any] | None = None  # patch: fields to set
    unset: list[str] | None = None  # patch: keys to remove
    grow: dict[str, int] | None = None  # patch: lists to make this long
    unique: list[str] | None = None  # patch + grow: string fields made distinct in copies
    text: str = ""  # body: the body to answer
    content_type: str = "text/plain; charset=utf-8"  # body
    delta: int = 0  # resize: bytes more (> 0) or fewer (< 0) than the real body
    fill: str = "X"  # resize: what the extra bytes are
    headers: dict[str, str] | None = None  # headers: set on the answer

    def matches(self, route: str) -> bool:
        return self.route == route or fnmatch.fnmatchcase(route, self.route)

    @classmethod
    def from_json(cls, obj: Any) -> Rule:
        if not isinstance(obj, dict):
            raise FaultPlanError(f"rule must be an object, got {obj!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - names
        if unknown:
            raise FaultPlanError(f"unknown rule field(s): {sorted(unknown)}")
        rule = cls(**obj)
        if rule.kind not in RULE_KINDS:
            raise FaultPlanError(f"unknown rule kind {rule.kind!r}")
        if not 0.0 <= float(rule.rate) <= 1.0:
            raise FaultPlanError("rate must be within 0..1")
        if rule.count is not None and rule.count < 0:
            raise FaultPlanError("count must be >= 0")
        if rule.kind == "resize" and rule.delta > 0 and not rule.fill:
            raise FaultPlanError("resize: fill must not be empty")
        if any(
            not isinstance(n, int) or not 0 <= n <= 1_000_000 for n in (rule.grow or {}).values()
        ):
            raise FaultPlanError("grow: lengths must be integers within 0..1000000")
        return rule


@dataclass(slots=True)
class FaultPlan:
    seed: int = 0
    enos_token_lifetime: int = 7200
    enos_timestamp_skew: float = 300.0
    iam_token_lifetime: int = 86400
    presign_expires: int = 3600
    iotda_download_window: float = 30.0
    iotda_task_delay: float = 1.0
    roma_job_delay: float = 1.0
    roma_export_fails: bool = False  # export jobs started now end FAILED (with their reasons)
    index_lag: float = 0.0
    one_shot: bool = True
    enos_range: bool = True
    koodrive_page_limit: int | None = None
    koodrive_empty_every: int = 0
    record_answers: int = 0  # keep the last N JSON answers of each route (GET /_admin/answers)
    rules: list[Rule] = field(default_factory=list)

    # ---- (de)serialisation -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> FaultPlan:
        plan = cls()
        plan.merge(obj)
        return plan

    def merge(self, obj: Any) -> None:
        """Set the fields present in ``obj``; ``rules`` given here are appended."""
        if not isinstance(obj, dict):
            raise FaultPlanError("fault plan must be an object")
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(obj) - names
        if unknown:
            raise FaultPlanError(f"unknown fault plan field(s): {sorted(unknown)}")
        for key, value in obj.items():
            if key == "rules":
                if not isinstance(value, list):
                    raise FaultPlanError("rules must be a list")
                self.rules.extend(Rule.from_json(r) for r in value)
            else:
                setattr(self, key, value)

    @classmethod
    def load(cls, path: Path) -> FaultPlan:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".toml":
            return cls.from_json(tomllib.loads(text))
        return cls.from_json(json.loads(text))


@dataclass(frozen=True, slots=True)
class Decision:
    """What the fault layer decided for one request."""

    latency: float = 0.0
    status: int | None = None  # error status to answer instead of the handler (5xx or 429)
    retry_after: int | None = None
    reset_after: int | None = None
    truncate_after: int | None = None
    patches: tuple[Rule, ...] = ()  # kind patch: applied to the JSON answer, in order
    body: Rule | None = None  # kind body: answered instead of the handler
    reshape: tuple[Rule, ...] = ()  # kinds resize / headers: applied to the handler's answer


def _matches(obj: dict[str, Any], match: dict[str, Any]) -> bool:
    return all(k in obj and obj[k] == v for k, v in match.items())


def patch_json(value: Any, rule: Rule, seq: Callable[[], str]) -> int:
    """Apply one ``patch`` rule to a decoded JSON answer in place; returns the objects changed."""
    changed = 0

    def apply(obj: dict[str, Any]) -> None:
        nonlocal changed
        changed += 1
        for k, v in (rule.set or {}).items():
            obj[k] = seq() if v == "$seq" else v
        for k in rule.unset or ():
            obj.pop(k, None)
        for k, n in (rule.grow or {}).items():
            items = obj.get(k)
            if isinstance(items, list) and items:
                obj[k] = grown(items, n, rule.unique or [])

    if not rule.match:
        if isinstance(value, dict):
            apply(value)
        return changed
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            hit = _matches(v, rule.match)
            stack.extend(v.values())
            if hit:
                apply(v)
        elif isinstance(v, list):
            stack.extend(v)
    return changed


def grown(items: list[Any], n: int, unique: list[str]) -> list[Any]:
    """``items`` made ``n`` long with copies of its items in turn (``unique`` fields suffixed)."""
    out = list(items[:n])
    i = 0
    while len(out) < n:
        item = items[i % len(items)]
        i += 1
        if isinstance(item, dict) and unique:
            item = dict(item)
            for k in unique:
                if isinstance(item.get(k), str):
                    item[k] = f"{item[k]}~{i}"
        out.append(item)
    return out


class FaultEngine:
    """Applies a :class:`FaultPlan` to requests (holds the RNG and consumes rule counts)."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan if plan is not None else FaultPlan()
        self.rng = random.Random(self.plan.seed)
        self._seq = 0
        # the last JSON answers of each route, when the plan's record_answers > 0 (the handler's
        # answer, before any patch): what a hostile test mutates
        self.answers: dict[str, collections.deque[dict[str, Any]]] = {}

    def record(self, route: str, path: str, status: int, content: Any) -> None:
        keep = self.plan.record_answers
        if keep <= 0:
            return
        q = self.answers.get(route)
        if q is None or q.maxlen != keep:
            q = self.answers[route] = collections.deque(q or (), maxlen=keep)
        q.append({"route": route, "path": path, "status": status, "json": content})

    def next_seq(self) -> str:
        self._seq += 1
        return f"seq-{self._seq}"

    def replace(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)

    def _fires(self, rule: Rule) -> bool:
        if rule.count is not None and rule.count <= 0:
            return False
        if rule.rate < 1.0 and self.rng.random() >= rule.rate:
            return False
        if rule.count is not None:
            rule.count -= 1
        return True

    def decide(self, route: str) -> Decision:
        latency = 0.0
        status: int | None = None
        retry_after: int | None = None
        reset_after: int | None = None
        truncate_after: int | None = None
        patches: list[Rule] = []
        reshape: list[Rule] = []
        body: Rule | None = None
        for rule in self.plan.rules:
            if not rule.matches(route):
                continue
            if rule.kind == "latency":
                if self._fires(rule):
                    latency += rule.seconds
            elif rule.kind == "patch":
                if self._fires(rule):
                    patches.append(rule)
            elif rule.kind in ("resize", "headers"):
                if self._fires(rule):
                    reshape.append(rule)
            elif body is not None:
                continue
            elif rule.kind == "body" and status is None and self._fires(rule):
                body = rule
            elif status is not None:
                continue  # an error already chosen: later error-ish rules do not fire
            elif rule.kind == "error" and self._fires(rule):
                status = rule.status
            elif rule.kind == "throttle" and self._fires(rule):
                status, retry_after = 429, rule.retry_after
            elif rule.kind == "reset" and reset_after is None and self._fires(rule):
                reset_after = rule.after_bytes
            elif rule.kind == "truncate" and truncate_after is None and self._fires(rule):
                truncate_after = rule.after_bytes
        return Decision(
            latency,
            status,
            retry_after,
            reset_after,
            truncate_after,
            tuple(patches),
            body,
            tuple(reshape),
        )
