"""ui.background: a slow value is computed once per server in the background; pages never wait for it."""

import threading

from ui import background


def test_a_page_sees_pending_then_the_value_computed_once():
    release, calls = threading.Event(), []

    def slow(x):
        calls.append(x)
        release.wait(10)
        return x * 2

    assert background.peek("test-slow", slow, 21) is background.PENDING
    assert background.peek("test-slow", slow, 21) is background.PENDING  # not started a second time
    release.set()
    assert background.wait("test-slow", slow, 21, timeout=10) == 42
    assert background.peek("test-slow", slow, 21) == 42
    assert calls == [21]


def test_a_failing_value_reads_as_unknown_not_as_a_crash():
    def broken():
        raise RuntimeError("no estimate today")

    assert background.wait("test-broken", broken, timeout=10) is None


def test_wait_gives_up_after_its_timeout():
    release = threading.Event()
    assert background.wait("test-timeout", release.wait, 5, timeout=0.05) is background.PENDING
    release.set()
