"""How the command line speaks: Dask's log lines as one-line warnings."""

import logging
import os

import pytest

from skseg._cli.messages import dask_logs_as_warnings


@pytest.mark.parametrize("quiet", [False, True])
def test_dask_log_lines_are_one_line_warnings_during_a_cluster_run(quiet, capsys):
    worker = logging.getLogger("distributed.worker")
    before = (logging.getLogger("distributed").handlers[:], worker.handlers[:])
    with dask_logs_as_warnings(quiet):
        worker.info("Start worker at tcp://127.0.0.1:1")
        worker.warning("Worker is at 85%% memory usage.\n  Pausing %s.", "work")
        logging.getLogger("distributed.nanny").error("Worker process %d was killed", 7)
        logging.getLogger("dask.config").warning("a setting")
        # Workers started now configure their logging from the environment.
        assert os.environ["DASK_DISTRIBUTED__ADMIN__LOG_FORMAT"].startswith(
            "skseg: warning: ")
    err = capsys.readouterr().err
    assert err == ("" if quiet else
                   "skseg: warning: Worker is at 85% memory usage. Pausing work.\n"
                   "skseg: warning: Worker process 7 was killed\n"
                   "skseg: warning: a setting\n")
    assert (logging.getLogger("distributed").handlers, worker.handlers) == before
    assert "DASK_DISTRIBUTED__ADMIN__LOG_FORMAT" not in os.environ
