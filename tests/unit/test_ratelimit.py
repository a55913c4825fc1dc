from labeler.adapters.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_passes_then_calls_are_spaced_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=10, burst=2, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]
    assert all(abs(w - 0.1) < 1e-9 for w in waits[2:])
    # 6 calls at 10/s with a burst of 2 take 0.4 s: the long-run rate never exceeds the quota share.
    assert abs(clock.now - 0.4) < 1e-9


def test_idle_time_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=5, burst=3, clock=clock, sleep=clock.sleep)
    clock.now = 100.0
    assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.acquire() > 0
