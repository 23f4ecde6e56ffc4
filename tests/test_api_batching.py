"""The API's adaptive batching (``imgcls.gateway.batching.Batcher``): who rides in which call.

Fast, no Triton: ``send`` is a function of the test. Each image is a distinct number, so a test
can tell whether every request got back its own rows.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from imgcls.gateway.batching import Batcher
from imgcls.gateway.errors import ApiError


class Recorder:
    """``send``: answers each image with its own value ×2, records every call's images; a call
    can be held until the test releases it."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first
        self.fail_with: BaseException | None = None

    def __call__(self, key, images: np.ndarray):
        self.calls.append([int(v) for v in images[:, 0]])
        self.entered.set()
        if self.hold_first and len(self.calls) == 1:
            assert self.release.wait(10), "the test never released the first call"
        if self.fail_with is not None:
            raise self.fail_with
        return images * 2, f"call {len(self.calls)}"


def _images(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64).reshape(-1, 1)


def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _queued(batcher: Batcher, key) -> int:
    return len(batcher._queues.get(key, ()))


def test_a_lone_request_is_sent_at_once_and_gets_its_rows():
    send = Recorder()
    outputs, extra = Batcher(send, lambda _k: 8).submit("m", _images(3, 4))
    assert send.calls == [[3, 4]]
    assert outputs.ravel().tolist() == [6, 8] and extra == "call 1"


def _behind_a_held_call(batcher: Batcher, send: Recorder, pool, queued: list[np.ndarray]) -> list:
    """Submit request 0 and hold its call; queue ``queued`` in this order; release. Futures of
    every request, request 0 first."""
    futures = [pool.submit(batcher.submit, "m", _images(0))]
    assert send.entered.wait(5)
    for n, images in enumerate(queued, start=1):
        futures.append(pool.submit(batcher.submit, "m", images))
        _wait_for(lambda n=n: _queued(batcher, "m") == n)
    send.release.set()
    return futures


def test_requests_arriving_during_a_call_share_the_next_one():
    send = Recorder(hold_first=True)
    batcher = Batcher(send, lambda _k: 32)
    with ThreadPoolExecutor(8) as pool:
        queued = [_images(10 + i, 20 + i) for i in range(5)]
        results = [f.result(10) for f in _behind_a_held_call(batcher, send, pool, queued)]
    assert send.calls == [[0], [v for i in range(5) for v in (10 + i, 20 + i)]]
    assert results[0][0].ravel().tolist() == [0]
    for i, (out, extra) in enumerate(results[1:]):
        assert out.ravel().tolist() == [2 * (10 + i), 2 * (20 + i)]  # its own rows, in order
        assert extra == "call 2"


def test_a_call_never_exceeds_the_batch_limit_and_never_splits_a_request():
    send = Recorder(hold_first=True)
    batcher = Batcher(send, lambda _k: 5)
    with ThreadPoolExecutor(8) as pool:
        # 2 images each: at most two requests (4 images) per call; then 7 > limit: alone
        queued = [_images(10 * i + 1, 10 * i + 2) for i in range(4)] + [_images(*range(100, 107))]
        for f in _behind_a_held_call(batcher, send, pool, queued):
            f.result(10)
    assert send.calls[1:] == [[1, 2, 11, 12], [21, 22, 31, 32], list(range(100, 107))]


def test_a_failed_call_fails_every_request_it_carried_and_only_those():
    send = Recorder(hold_first=True)
    send.fail_with = ApiError(504, "triton_timeout", "Triton did not answer")
    batcher = Batcher(send, lambda _k: 8)
    with ThreadPoolExecutor(4) as pool:
        for f in _behind_a_held_call(batcher, send, pool, [_images(2), _images(3)]):
            with pytest.raises(ApiError) as err:
                f.result(10)
            assert err.value.status == 504
    assert send.calls == [[0], [2, 3]]
    send.fail_with = None
    out, _ = batcher.submit("m", _images(4))  # the batcher is not stuck after a failure
    assert out.ravel().tolist() == [8]


def test_different_keys_never_share_a_call():
    send = Recorder(hold_first=True)
    batcher = Batcher(send, lambda _k: 8)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, "a", _images(1))
        assert send.entered.wait(5)
        other = pool.submit(batcher.submit, "b", _images(2))  # its own slot: sent at once
        _wait_for(lambda: len(send.calls) == 2)
        send.release.set()
        first.result(10), other.result(10)
    assert send.calls == [[1], [2]]


def test_slots_bound_the_calls_in_flight():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def send(_key, images):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01)
        with lock:
            in_flight[0] -= 1
        return images, None

    batcher = Batcher(send, lambda _k: 4, slots=2)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: batcher.submit("m", _images(i)), range(64)))
    assert peak[0] == 2


def test_a_second_call_starts_only_once_it_is_as_big_as_the_call_in_flight():
    send = Recorder(hold_first=True)
    batcher = Batcher(send, lambda _k: 32, slots=2)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, "m", _images(1, 2, 3))
        assert send.entered.wait(5)
        lone = pool.submit(batcher.submit, "m", _images(7))
        _wait_for(lambda: _queued(batcher, "m") == 1)
        time.sleep(0.05)
        assert send.calls == [[1, 2, 3]]  # one image would take the free instance: it waits
        pair = pool.submit(batcher.submit, "m", _images(8, 9))
        _wait_for(lambda: len(send.calls) == 2)  # three images queued: the second call goes
        assert send.calls[1] == [7, 8, 9] and not first.done()
        send.release.set()
        assert [f.result(10)[0].ravel().tolist() for f in (first, lone, pair)] == [
            [2, 4, 6], [14], [16, 18]]  # fmt: skip


def test_many_threads_many_requests_every_answer_is_its_own():
    calls = []

    def send(_key, images):
        calls.append(len(images))
        time.sleep(0.001)
        return images * 2, None

    batcher = Batcher(send, lambda _k: 8)
    rng = np.random.default_rng(0)
    jobs = [_images(*rng.integers(0, 10**6, int(n))) for n in rng.integers(1, 4, 400)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: batcher.submit("m", x)[0], jobs, timeout=60))
    for job, out in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(out, job * 2)
    assert sum(calls) == sum(len(j) for j in jobs) and len(calls) < len(jobs)  # shared calls


def test_slots_must_be_positive():
    with pytest.raises(ValueError, match="slots"):
        Batcher(Recorder(), lambda _k: 8, slots=0)
