"""launcher/event_loop.py: work handed to libvirt's event-loop thread runs there, one piece at
a time, with its result or exception returned to the caller (real libvirt default loop, in this
test process)."""
from __future__ import annotations

import threading

import pytest

from launcher.event_loop import EventLoop


@pytest.fixture(scope="module")
def loop() -> EventLoop:
    made = EventLoop()
    made.start()
    return made


def test_work_runs_on_the_loop_thread_and_answers(loop):
    assert loop.call(lambda: threading.current_thread().name) == "libvirt-events"
    assert not loop.on_loop()
    # Work already on the loop runs at once (a nested call would otherwise wait for itself).
    assert loop.call(lambda: loop.call(lambda: 41) + 1, timeout=5) == 42
    with pytest.raises(ZeroDivisionError):
        loop.call(lambda: 1 / 0)


def test_calls_from_many_threads_never_overlap(loop):
    inside, overlaps, done = [0], [], []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            inside[0] += 1
            if inside[0] > 1:
                overlaps.append(i)
        threading.Event().wait(0.001)
        with lock:
            inside[0] -= 1
        return i

    def caller(base: int) -> None:
        done.extend(loop.call(lambda i=i: work(i)) for i in range(base, base + 25))

    threads = [threading.Thread(target=caller, args=(n * 100,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [] and sorted(done) == sorted(n * 100 + i for n in range(8) for i in range(25))


def test_a_wedged_loop_times_out_and_the_work_never_runs_late(loop):
    release, busy, ran = threading.Event(), threading.Event(), []
    blocker = threading.Thread(target=lambda: loop.call(lambda: busy.set() or release.wait(10)))
    blocker.start()
    assert busy.wait(5)
    try:
        with pytest.raises(TimeoutError):
            loop.call(lambda: ran.append(1), timeout=0.2)
    finally:
        release.set()
        blocker.join()
    assert loop.call(lambda: "free again") == "free again"
    assert ran == []


def test_post_does_not_wait_and_runs_on_the_loop(loop):
    release = threading.Event()
    blocker = loop.post(lambda: release.wait(10))
    posted = loop.post(lambda: threading.current_thread().name)  # queued behind the blocker
    assert not posted.done()  # the caller was not held up
    release.set()
    assert blocker.result(5) is True and posted.result(5) == "libvirt-events"


def test_before_the_loop_runs_work_runs_in_place():
    idle = EventLoop()  # never started: nothing else can be on a loop thread
    assert idle.call(lambda: threading.current_thread().name) == threading.current_thread().name
    assert idle.post(lambda: 7).result(0) == 7
