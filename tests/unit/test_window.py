"""DownloadTurns: one download start per window, readers (urgent) first, then arrival order."""

from __future__ import annotations

import trio
import trio.testing

from fusefs.providers.window import DownloadTurns


async def test_one_turn_per_window_in_arrival_order(autojump_clock: trio.abc.Clock) -> None:
    turns = DownloadTurns(30.0)
    started: list[tuple[str, float]] = []

    async def download(key: str) -> None:
        async with turns.turn(key):
            started.append((key, trio.current_time()))
            await trio.sleep(1.0)  # until the headers

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for key in ("a", "b", "c"):
            nursery.start_soon(download, key)
            await trio.sleep(0.01)
    assert [k for k, _ in started] == ["a", "b", "c"]
    # one window from the end of the previous turn (its answer), not from its start
    assert [round(t - t0) for _, t in started] == [0, 31, 62]
    assert turns.starts == 3 and turns.holder is None


async def test_a_slow_answer_pushes_the_next_turn(autojump_clock: trio.abc.Clock) -> None:
    """The service starts its window when it answers: a download whose headers take 20 s
    must not let the next one start 30 s after the first was sent (it would be refused)."""
    turns = DownloadTurns(30.0)
    t0 = trio.current_time()
    async with turns.turn("slow"):
        assert round(turns.eta(0)) == 30  # while held: as if it ended now
        await trio.sleep(20.0)
    assert round(turns.eta(0)) == 30
    async with turns.turn("next"):
        assert round(trio.current_time() - t0) == 50


async def test_urgent_goes_ahead_even_while_others_wait(autojump_clock: trio.abc.Clock) -> None:
    turns = DownloadTurns(30.0)
    order: list[str] = []

    async def download(key: str) -> None:
        async with turns.turn(key):
            order.append(key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(download, "first")
        await trio.sleep(1)  # "first" started; the next turn is at 30 s
        for key in ("bg1", "bg2", "bg3"):
            nursery.start_soon(download, key)
            await trio.sleep(0.01)  # (trio starts new tasks in no set order)
        await trio.sleep(5)
        assert turns.queue() == ["bg1", "bg2", "bg3"]
        # a reader comes for bg3 (already queued) and for a new key: both go first
        with turns.urgent("bg3"):
            nursery.start_soon(download, "reader")
            await trio.sleep(0.01)
            with turns.urgent("reader"):
                await trio.sleep(0.1)
                assert turns.queue() == ["bg3", "reader", "bg1", "bg2"]
                assert round(turns.eta(0)) == 24 and round(turns.eta(2)) == 84
                await trio.sleep(60)  # two turns
        await trio.sleep(100)
    assert order == ["first", "bg3", "reader", "bg1", "bg2"]


async def test_defer_and_cancelled_waiters(autojump_clock: trio.abc.Clock) -> None:
    turns = DownloadTurns(10.0)
    async with turns.turn("a"):
        pass
    turns.defer(25.0)  # the service said "too frequent": not before 25 s from now
    assert round(turns.eta(0)) == 25
    with trio.move_on_after(5):
        async with turns.turn("gone"):
            raise AssertionError("no turn within the window")
    assert turns.queue() == [] and not turns.queued("gone")
    t0 = trio.current_time()
    async with turns.turn("b"):
        assert round(trio.current_time() - t0) == 20
