"""The API's cache of encoded bodies by ETag is bounded in bytes, least recently used out."""

from __future__ import annotations

from app.routes.responses import Bodies


def test_bodies_stay_within_their_byte_budget_least_recently_used_out() -> None:
    cache = Bodies(max_bytes=1600)  # bodies up to 100 bytes are kept
    for n in range(20):
        cache.put(("job", str(n)), bytes(100))
        assert cache.size <= 1600
    assert cache.get(("job", "0")) is None and cache.get(("job", "19")) == bytes(100)
    assert cache.get(("job", "4")) is not None  # the oldest of the 16 kept
    cache.put(("job", "20"), bytes(100))  # "4" was used last: "5" goes
    assert cache.get(("job", "5")) is None and cache.get(("job", "4")) is not None


def test_a_body_over_a_sixteenth_of_the_budget_is_not_kept() -> None:
    cache = Bodies(max_bytes=1600)
    cache.put(("job", "big"), bytes(101))
    assert cache.get(("job", "big")) is None and cache.size == 0


def test_a_key_put_again_is_counted_once() -> None:
    cache = Bodies(max_bytes=1600)
    for _ in range(5):
        cache.put(("job", "same"), bytes(100))
    assert cache.size == 100
