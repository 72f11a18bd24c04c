import threading
import time
import warnings

import joblib
import numpy as np
import pytest
import sklearn

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


def working_memory(X, start, stop):
    return sklearn.get_config()["working_memory"]


@pytest.mark.parametrize("backend", ["threading", pytest.param("loky", marks=pytest.mark.slow)])
def test_map_chunks_runs_every_task_under_the_callers_settings_without_warning(backend):
    # working_memory sizes a task's buffers, so every task, in a thread or
    # in a worker process, runs under the caller's scikit-learn settings.
    # The warning filters are empty for an instant whenever a task of
    # scikit-learn's own Parallel installs them on a thread; dispatching
    # then must not make the tasks warn (thousands of times at 1M images).
    chunks = [(start, start + 1) for start in range(8)]
    with sklearn.config_context(working_memory=7), joblib.parallel_config(backend=backend), \
            warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # the filters as such a task leaves them
        seen = list(map_chunks(working_memory, list(range(8)), chunks, n_jobs=2))
    assert seen == [7] * 8
    assert not [w for w in caught if "delayed" in str(w.message)]
