"""streamqa.handoff.LoopHandoff: worker -> loop hand-over with one wake-up pending at most."""

from __future__ import annotations

import asyncio
import threading

from streamqa.handoff import LoopHandoff


def test_a_flood_from_a_thread_wakes_a_stuck_loop_once_and_keeps_order() -> None:
    got: list[int] = []
    wakes: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakes.append(a[0]), real(*a))[1]  # type: ignore[method-assign]
        handoff: LoopHandoff[int] = LoopHandoff(got.append, loop)
        producer = threading.Thread(target=lambda: [handoff.put(i) for i in range(500)])
        producer.start()
        producer.join()  # the loop was stuck (this coroutine) the whole time
        assert len(wakes) == 1
        while len(got) < 500:
            await asyncio.sleep(0)

    asyncio.run(main())
    assert got == list(range(500))


def test_a_drain_delivers_only_what_was_there_when_it_began() -> None:
    """An item put while a drain runs waits for the next drain, so a producer that keeps up
    with the loop cannot keep one callback running forever."""
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def deliver(item: str) -> None:
            order.append(item)
            if item == "a":
                handoff.put("late")  # as a worker would, from inside the drain's time slice

        handoff: LoopHandoff[str] = LoopHandoff(deliver, loop)
        handoff.put("a")
        handoff.put("b")
        loop.call_soon(order.append, "other callback")  # queued after the first drain
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert order == ["a", "b", "other callback", "late"]


def test_put_on_a_closed_loop_says_so() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    handoff: LoopHandoff[int] = LoopHandoff(lambda _: None, loop)
    assert handoff.put(1) is False
