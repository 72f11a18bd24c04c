import threading
import time

import joblib
import numpy as np
import pytest

from skseg._chunks import IN_FLIGHT_PER_JOB, map_chunks


class Finished:
    """Counts the tasks that have finished, across threads."""

    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, X, start, stop):
        with self.lock:
            self.count += 1
        return start, stop, sum(X[i] for i in range(start, stop))


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_map_chunks_holds_at_most_a_window_of_finished_results(n_jobs):
    # A caller slow to merge results: tasks that finished but whose results
    # it has not taken yet are what it holds; never more than one window.
    X = list(range(120))
    chunks = [(start, start + 3) for start in range(0, 120, 3)]
    finished = Finished()
    held = []
    results = []
    for consumed, result in enumerate(map_chunks(finished, X, chunks, n_jobs=n_jobs)):
        time.sleep(0.01)
        held.append(finished.count - consumed)
        results.append(result)
    window = IN_FLIGHT_PER_JOB * joblib.effective_n_jobs(n_jobs)
    assert max(held) <= window
    assert results == [(start, stop, sum(range(start, stop))) for start, stop in chunks]


def test_map_chunks_resolves_per_task_arguments_at_dispatch():
    # An argument with for_task is read when its task is dispatched, so a
    # bound that tightens while the results come in reaches later windows.
    class Latest:
        value = 0

        def for_task(self, start, stop):
            return self.value

    latest = Latest()
    seen = []
    for start, value in map_chunks(lambda X, start, stop, value: (start, value),
                                   np.zeros((40, 2, 2, 1)), [(i, i + 1) for i in range(40)],
                                   latest, n_jobs=2):
        seen.append(value)
        latest.value = start + 1
    window = IN_FLIGHT_PER_JOB * 2
    # Each window sees what the caller had merged when it was dispatched.
    assert seen == [(i // window) * window for i in range(40)]
