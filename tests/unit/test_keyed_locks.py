"""The per-content lock that makes identical bytes in flight at once cost one label call."""

from __future__ import annotations

import threading
import time

from labeler.logic.cache import KeyedLocks


def test_same_key_is_serialised_and_other_keys_are_not() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    guard = threading.Lock()

    def work(key: str) -> None:
        with locks.hold(key):
            with guard:
                inside[key] += 1
                most[key] = max(most[key], inside[key])
            time.sleep(0.01)
            with guard:
                inside[key] -= 1

    threads = [threading.Thread(target=work, args=(key,)) for key in "ab" * 8]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert most == {"a": 1, "b": 1}
    assert len(locks) == 0  # nothing left behind: memory stays bounded by what is in flight


def test_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyedLocks()
    entered = threading.Event()

    def take_b() -> None:
        with locks.hold("b"):
            entered.set()

    with locks.hold("a"):
        thread = threading.Thread(target=take_b)
        thread.start()
        assert entered.wait(5)
        thread.join()
    assert len(locks) == 0


def test_an_exception_releases_the_lock() -> None:
    locks = KeyedLocks()
    try:
        with locks.hold("a"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert len(locks) == 0
    with locks.hold("a"):
        pass
