"""Run skseg's joblib tasks on a Dask cluster (the optional ``skseg[dask]``)."""

import contextlib
from numbers import Integral

_INSTALL = 'Dask is not installed: pip install "skseg[dask]" (dask[distributed]).'


@contextlib.contextmanager
def dask_backend(scheduler=None, workers=None, connect_timeout=10):
    """Run joblib's parallel work on a Dask cluster within the block.

    Connects a :class:`dask.distributed.Client` to a running scheduler, or
    starts a local cluster of worker processes, and makes Dask joblib's
    backend: the chunked passes of :class:`MultilevelSegmenter` then run on
    the cluster's workers. On leaving, it closes the client, and the
    cluster if it started one; a running scheduler is left running.

    Parameters
    ----------
    scheduler : str, default=None
        Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
    workers : int, default=None
        Without ``scheduler``: start a local cluster of this many worker
        processes of one thread each (``None``: one per core).
    connect_timeout : float, default=10
        Seconds to wait for ``scheduler`` to answer (Dask's own default
        waits 30 s, retrying an address where nothing listens).

    Yields
    ------
    client : dask.distributed.Client

    Raises
    ------
    ImportError
        If ``dask[distributed]`` is not installed.
    ValueError
        If both ``scheduler`` and ``workers`` are given, or ``workers`` is
        not a positive int.
    OSError
        If no scheduler answers at ``scheduler`` within ``connect_timeout``.
    """
    if scheduler is not None and workers is not None:
        raise ValueError(
            f"scheduler={scheduler!r} and workers={workers!r}: give one, a running "
            "scheduler to connect to or the number of local workers to start."
        )
    if workers is not None and (
        not isinstance(workers, Integral) or isinstance(workers, bool) or workers < 1
    ):
        raise ValueError(f"workers={workers!r} must be a positive int.")
    try:
        import joblib
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ImportError(_INSTALL) from error

    with contextlib.ExitStack() as stack:
        if scheduler is None:
            # One thread per process: the passes hold the GIL in parts, and
            # torch in each worker then uses one core (Dask's nanny sets
            # OMP_NUM_THREADS=1 for its workers).
            cluster = stack.enter_context(
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
            )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout=connect_timeout))
            except OSError as error:  # distributed's timeout says "after 10 s", not where
                raise OSError(f"no Dask scheduler answered at {scheduler} within "
                              f"{connect_timeout:g} s.") from error
        # This client, not whichever is the process's default.
        stack.enter_context(joblib.parallel_config(backend="dask", client=client))
        yield client
