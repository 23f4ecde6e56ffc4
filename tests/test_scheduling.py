"""How the suite shares the machine between its pytest-xdist workers (tests/scheduling.py)."""

from __future__ import annotations

import os

import pytest

from tests.scheduling import PRESET, TF_THREADS, thread_share


@pytest.mark.parametrize(
    ("workers", "cpus", "share"),
    [(2, 2, 1), (2, 8, 4), (3, 8, 2), (3, 2, 1), (1, 2, None), (1, 64, None)],
)
def test_each_worker_gets_its_share_of_the_cores(workers, cpus, share):
    assert thread_share(workers, cpus) == share


def test_what_a_worker_starts_inherits_its_share(request):
    workers = int(getattr(request.config, "workerinput", {}).get("workercount", 1))
    share = thread_share(workers, os.cpu_count() or 1)
    for name in set(TF_THREADS) - PRESET:
        assert os.environ.get(name) == (None if share is None else str(share)), name


def test_the_shared_builds_train_with_tensorflows_own_threads(monkeypatch):
    from tests.scheduling import tensorflows_own_threads

    for name in TF_THREADS:
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr("tests.scheduling.PRESET", {"TF_NUM_INTEROP_THREADS"})
    with tensorflows_own_threads():
        assert "TF_NUM_INTRAOP_THREADS" not in os.environ  # the share the worker set: gone
        assert os.environ["TF_NUM_INTEROP_THREADS"] == "1"  # a user's own setting: kept
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "1"  # and back after the build
