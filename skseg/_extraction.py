"""Running a fitted :class:`ViTPatchTransformer`'s images through its model.

Images are decoded in threads a few batches ahead of the forward pass, as a
DataLoader's workers prefetch; each batch of one input size goes through the
model in one tensor. Into a feature store, the batches run as joblib tasks
that append each batch from a background thread while the next one goes
through the model, and files are hashed in tasks too, where they are read.

The estimator (its parameters, validation and ``transform``'s plan of
batches) is in ``_transformer``; the forward pass and its hooks in
``_backbone``.
"""

import functools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sklearn
import threadpoolctl
import torch
from joblib import Parallel, delayed

from ._backbone import forward_facets, resolve_device
from ._chunks import Configured
from ._features import ImageFeatures
from ._image_decoding import normalised_pixels
from ._images import content_hash
from ._store import FeatureStore
from ._weights import get_model

# Batches of images per extraction task writing into a store, and image
# files per hashing task.
_BATCHES_PER_TASK = 8
_FILES_PER_HASH_TASK = 256
# Threads decoding images for the forward pass, and batches decoded ahead of it.
_DECODE_THREADS = 4
_PREFETCH_BATCHES = 2


def backbone(transformer):
    """The model a transformer's parameters name (built once per process)."""
    return get_model(
        transformer.model,
        pretrained=transformer.pretrained,
        weights=transformer.weights,
        device=resolve_device(transformer.device),
    )


def model_input(transformer, image, size, device):
    """One image as the fitted transformer's model takes it: loaded at
    ``size`` (antialiased, no crop, reduced before float), normalised by the
    model's mean and standard deviation, on ``device``."""
    mean = torch.tensor(transformer.mean_).view(3, 1, 1)
    std = torch.tensor(transformer.std_).view(3, 1, 1)
    return normalised_pixels(image, size, mean, std).to(device, non_blocking=True)


def feature_record(transformer, record, image_shape, image, content_key):
    """The :class:`ImageFeatures` of one image from the arrays of
    :func:`extract_batches`."""
    return ImageFeatures(
        patches=record["patches"],
        cls=record["cls"],
        attention=record["attention"],
        image_shape=image_shape,
        image=image,
        patch_size=transformer.patch_size_,
        content_key=content_key,
    )


def open_store(transformer, config):
    """The transformer's ``store``, for the extraction parameters ``config``."""
    return FeatureStore(transformer.store, extraction=config,
                        storage_options=transformer.store_options)


def content_keys(transformer, images):
    """The digest of every image. Files going into a store are read and
    hashed where the extraction runs (under joblib's Dask backend, on
    the workers): a dataset's bytes never all pass through this process."""
    if transformer.store is None or not all(isinstance(x, (str, os.PathLike))
                                            for x in images):
        return [content_hash(image) for image in images]
    parts = _in_tasks(transformer.n_jobs, _hash_files, [
        (images[start:start + _FILES_PER_HASH_TASK],)
        for start in range(0, len(images), _FILES_PER_HASH_TASK)
    ])
    return [key for part in parts for key in part]


def _in_tasks(n_jobs, function, arguments):
    """``function`` on each tuple of ``arguments``, as joblib tasks on the
    backend in effect (threads when none is: processes would each import
    torch and build the model), each under the caller's scikit-learn
    settings, without touching the warning filters (see
    :class:`~skseg._chunks.Configured`)."""
    settings = sklearn.get_config()
    return Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(Configured(functools.partial(function, *args), settings, function))()
        for args in arguments
    )


def _hash_files(paths):
    return [content_hash(path) for path in paths]


def extract_batches(transformer, images, batches):
    """``(indices, records)`` for each batch of ``(size, indices)``.

    The next batches are decoded in threads while this one runs through the
    model, never more than ``_PREFETCH_BATCHES`` ahead, so memory stays
    bounded by a few batches of pixels. Each record is a dict of the image's
    ``patches``, ``cls`` and ``attention`` arrays in the transformer's dtype.
    """
    from tqdm.auto import tqdm

    model = backbone(transformer)
    device = next(model.parameters()).device
    dtype = np.dtype(transformer.dtype)
    total = sum(len(indices) for _, indices in batches)
    with ThreadPoolExecutor(max_workers=_DECODE_THREADS, initializer=decoding_thread,
                            initargs=(sklearn.get_config(),)) as pool, tqdm(
        total=total, disable=not transformer.verbose, unit="img", desc="ViT features"
    ) as progress:

        def submit(batch):
            size, indices = batch
            return [pool.submit(model_input, transformer, images[i], size, device)
                    for i in indices]

        pending = deque(submit(batch) for batch in batches[:_PREFETCH_BATCHES])
        try:
            for b, (size, indices) in enumerate(batches):
                tensors = [future.result() for future in pending.popleft()]
                if b + _PREFETCH_BATCHES < len(batches):
                    pending.append(submit(batches[b + _PREFETCH_BATCHES]))
                patches, cls, attention = forward_facets(
                    model, torch.stack(tensors), facet=transformer.facet,
                    layer=transformer.layer, attention=transformer.attention,
                )
                del tensors
                patches = patches.float().cpu().numpy().astype(dtype, copy=False)
                cls = cls.float().cpu().numpy().astype(dtype, copy=False)
                if attention is not None:
                    attention = attention.float().cpu().numpy().astype(dtype, copy=False)
                yield indices, [
                    {"patches": patches[j].copy(), "cls": cls[j].copy(),
                     "attention": None if attention is None else attention[j].copy()}
                    for j in range(len(indices))
                ]
                progress.update(len(indices))
        finally:  # stopped early: decode no more of what nobody will read
            for futures in pending:
                for future in futures:
                    future.cancel()


def decoding_thread(config):
    """Set up a decoding thread: the caller's scikit-learn settings (its
    ``working_memory`` sizes the strips of a large image; settings are per
    thread), and its torch operations (the resize, the normalisation) on this
    thread alone.

    The pool is the parallelism. With torch's default, every decoding thread
    would open an OpenMP team as large as the machine for each resize, on
    cores the forward already uses: on 2 busy cores a resize then cost 14 ms
    of CPU time, most of it spent waiting for a core, against 1.6 to 2.9 ms
    on one thread. OpenMP's thread count is each thread's own setting, so the
    forward keeps its threads. The values do not depend on it: each output
    pixel of a resize is one weighted sum in a fixed order.
    """
    sklearn.set_config(**config)
    torch.get_num_threads()  # torch sets its count up once per thread: first, not after
    threadpoolctl.threadpool_limits(1, user_api="openmp")


def extract_into_store(transformer, config, images, shapes, keys, batches):
    """Extract ``batches`` of ``images`` and append them to the
    transformer's store, in tasks on the joblib backend in effect.

    Each task extracts a run of batches and appends them to the store
    itself: under joblib's Dask backend the tasks run on the cluster's
    workers, which share the store's file system or object storage. A task
    retried after a worker died appends its images again, and the store
    reads each content key once.
    """
    tasks = [batches[start:start + _BATCHES_PER_TASK]
             for start in range(0, len(batches), _BATCHES_PER_TASK)]
    _in_tasks(transformer.n_jobs, _extract_task, [
        (transformer, config, {i: (images[i], shapes[i], keys[i])
                               for _, indices in task for i in indices}, task)
        for task in tasks
    ])


def _extract_task(transformer, config, items, batches):
    """Extract ``batches`` of ``items`` (index -> (image, shape, key)) and
    append each batch to the transformer's store as soon as it is computed.

    Appends run in a background thread while the next batch goes through the
    model, one batch at a time and in order: at most one computed batch waits
    in memory, an error in a write surfaces at the next batch, and a batch
    whose write has started is committed before this returns or raises (an
    interrupted run keeps it).
    """
    store = open_store(transformer, config)
    images = {i: image for i, (image, _, _) in items.items()}

    settings = sklearn.get_config()  # scikit-learn's settings are per thread

    def append(indices, records):
        with sklearn.config_context(**settings):  # working_memory sizes the commits
            store.extend(
                (feature_record(transformer, record, items[i][1], items[i][0], items[i][2])
                 for i, record in zip(indices, records)),
                content_keys=[items[i][2] for i in indices],
            )

    with ThreadPoolExecutor(max_workers=1) as writer:
        writing = None
        for indices, records in extract_batches(transformer, images, batches):
            if writing is not None:
                writing.result()
            writing = writer.submit(append, indices, records)
        if writing is not None:
            writing.result()
