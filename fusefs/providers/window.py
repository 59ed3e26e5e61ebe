"""Download turns for a service that allows one download per window (IoTDA: one per 30 s).

Every download attempt of the provider waits for a turn here. A turn is given when no other
download holds one (a turn lasts until the response headers have arrived) and ``interval``
seconds have passed since the previous turn ended (plus any ``defer``). Counted from the end, not
the start: the service starts its window when it answers, which is before its headers reach us
and after our request left, so the next request arrives at least ``interval`` after that answer
however long the previous one travelled (a window counted from our start could, with a request
slower than the next, land inside the service's window: a refused ``IOTDA.014805``, a window
lost). Among the waiters, one
whose object a reader waits for (``urgent``) goes first, then the others in arrival order: a
reader never waits behind background work for more than the one download already started.

The vfs reads the queue (``queue``, ``eta``) for ``fusefs prefetch`` and watches ``moved`` to
tell a reader that is waiting its turn (progress) from one that is stuck (docs/semantics.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import trio

from fusefs import metrics


@dataclass(eq=False, slots=True)
class _Waiter:
    key: str
    seq: int


#: ``gate(name, interval)``: returns when the fleet lets this host start a download (the
#: window is per user, not per host: fusefs.fleet.CacheTier.window); None: one host.
WindowGate = Callable[[str, float], Awaitable[None]]


class DownloadTurns:
    def __init__(
        self,
        interval: float,
        *,
        name: str = "",
        gate: WindowGate | None = None,
        gate_name: str = "",
    ) -> None:
        self.interval = interval
        self.name = name  # the provider: labels the time waited for turns (rate-limit waits)
        self.gate = gate  # the fleet's window, waited for while holding the local turn
        self.gate_name = gate_name or name
        self.last_start: float | None = None  # trio time the last turn was given
        self.last_end: float | None = None  # trio time the last turn was given back
        self.starts = 0  # turns given so far
        self.holder: str | None = None  # the key holding the turn now
        self._not_before = -math.inf
        self._waiting: list[_Waiter] = []
        self._urgent: dict[str, int] = {}  # key -> readers waiting for it
        self._seq = itertools.count()
        self._moved = trio.Event()

    # -- what the queue looks like -----------------------------------------------------------
    @property
    def moved(self) -> trio.Event:
        """Set at the next change: a waiter came or left, a turn was given or given back."""
        return self._moved

    def _notify(self) -> None:
        ev, self._moved = self._moved, trio.Event()
        ev.set()

    def _rank(self, w: _Waiter) -> tuple[int, int]:
        return (0 if self._urgent.get(w.key) else 1, w.seq)

    def queue(self) -> list[str]:
        """The keys waiting for a turn, in the order they will get one."""
        return [w.key for w in sorted(self._waiting, key=self._rank)]

    def queued(self, key: str) -> bool:
        return any(w.key == key for w in self._waiting)

    def is_urgent(self, key: str) -> bool:
        return bool(self._urgent.get(key))

    def next_start(self) -> float:
        """The earliest trio time the next turn can be given (now or later); while a turn is
        held, as if it ended now."""
        now = trio.current_time()
        t = self._not_before
        if self.holder is not None:
            t = max(t, now + self.interval)
        elif self.last_end is not None:
            t = max(t, self.last_end + self.interval)
        return max(t, now)

    def eta(self, position: int) -> float:
        """Seconds from now until the ``position``-th next turn (0: the next), if every
        download ahead of it starts on time."""
        return self.next_start() - trio.current_time() + position * self.interval

    # -- changing it -------------------------------------------------------------------------
    @contextmanager
    def urgent(self, key: str) -> Iterator[None]:
        """While inside, a reader waits for ``key``: its download goes ahead of the others."""
        self._urgent[key] = self._urgent.get(key, 0) + 1
        self._notify()
        try:
            yield
        finally:
            left = self._urgent[key] - 1
            if left:
                self._urgent[key] = left
            else:
                del self._urgent[key]
            self._notify()

    def defer(self, seconds: float) -> None:
        """The service said "too frequent": the next turn waits ``seconds`` from now at least."""
        self._not_before = max(self._not_before, trio.current_time() + seconds)
        self._notify()

    @asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """Wait for a turn for ``key``'s download and hold it inside (until the headers)."""
        me = _Waiter(key, next(self._seq))
        self._waiting.append(me)
        self._notify()
        since = trio.current_time()
        try:
            while True:
                moved = self._moved
                if self.holder is None and min(self._waiting, key=self._rank) is me:
                    start = self.next_start()
                    if start <= trio.current_time():
                        break
                    with trio.move_on_at(start):
                        await moved.wait()  # a more urgent waiter may come meanwhile
                    continue
                await moved.wait()
        finally:
            self._waiting.remove(me)
            self._notify()
            metrics.rate_limit_wait(self.name, trio.current_time() - since)
        self.holder = key
        try:
            if self.gate is not None:
                since = trio.current_time()
                await self.gate(self.gate_name, self.interval)
                metrics.rate_limit_wait(self.name, trio.current_time() - since)
            self.last_start = trio.current_time()
            self.starts += 1
            yield
        finally:
            self.holder = None
            self.last_end = trio.current_time()  # the next turn is one interval from now
            self._notify()
