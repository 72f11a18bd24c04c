"""ViTPatchTransformer: per-image patch attention features from a timm ViT."""

import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral

import numpy as np
import threadpoolctl
import torch
import sklearn
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from ._backbone import check_facet_support, forward_facets, resolve_device
from ._cache import FeatureCache
from ._features import FACETS, FeatureSequence, ImageFeatures
from ._image_checks import as_image_list, check_images
from ._image_decoding import normalised_pixels
from ._images import content_hash
from ._store import FeatureStore
from ._validation import HasMethods, Interval, StrOptions
from ._weights import check_model_name, get_model, weights_identity


def _round_to_patch(side, patch):
    return max(patch, int(round(side / patch)) * patch)


class ViTPatchTransformer(TransformerMixin, BaseEstimator):
    """Patch attention features of a self-supervised Vision Transformer.

    Runs a `timm <https://github.com/huggingface/pytorch-image-models>`_ ViT
    (DINO, DINOv2, DINOv3 or any plain ViT) over a list of images and returns,
    per image, a grid of patch features taken from one attention block, the
    final CLS token and, optionally, the CLS-to-patch attention of the last
    block.

    Parameters
    ----------
    model : str, default="vit_small_patch8_224.dino"
        A timm model name, with or without a pretrained tag, e.g.
        ``"vit_small_patch16_224.dino"``, ``"vit_small_patch14_reg4_dinov2.lvd142m"``
        or ``"vit_small_patch16_dinov3.lvd1689m"``.
    pretrained : bool, default=True
        Load pretrained weights from the Hugging Face hub (or its local
        cache). Ignored when ``weights`` is given. ``False`` gives random
        weights (from a fixed seed, the same in every process), useful only
        for testing and offline demos.
    weights : str or path-like, default=None
        A local weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) in
        timm's format or the original DINO / DINOv2 / DINOv3 release format,
        converted by timm's checkpoint filter. Pickle files are read with
        ``torch.load(weights_only=True)``.
    facet : {"key", "query", "value", "token"}, default="key"
        What to read from block ``layer``: the attention keys, queries or
        values (heads concatenated), or the block's output tokens.
    layer : int, default=-1
        Index of the block to read, negative from the end.
    attention : bool, default=False
        Also return the last block's CLS-to-patch attention averaged over
        heads (computed from the CLS query alone, never the full matrix).
    image_size : int, (int, int) or None, default=224
        An int resizes every image to a square of that side, a pair to
        ``(height, width)``; ``None`` keeps each image's aspect ratio. Sides are
        rounded to a multiple of the patch size. Images are resized whole, never
        cropped, so the patch grid covers the full image. Images of one target
        size share batches, so with ``None`` batches are only as full as the
        dataset has images of equal size.
    batch_size : int, default=16
        Images per forward pass.
    device : {"auto", "cpu", "cuda", "mps"}, default="auto"
        Where to run the model; ``"auto"`` takes CUDA, then MPS, then CPU.
    dtype : {"float32", "float16"}, default="float32"
        Type of the returned arrays; ``"float16"`` halves their memory.
    memory : None, str, path-like or joblib.Memory, default=None
        Deprecated in 0.1, removed in 0.2: use ``store``, which caches the
        same way (by image content and every feature-changing parameter) and
        also serves many writers, object storage and datasets larger than
        memory. A folder for a per-image cache of ``.npz`` files.
    store : None, str or path-like, default=None
        The location of a :class:`FeatureStore` (a path, or an fsspec URL
        such as ``s3://bucket/features.zarr``) to write the features into,
        batch by batch:
        :meth:`transform` then returns a lazy view of the store, one image per
        input in input order, and images the store already holds (same
        content, same feature-changing parameters) are not run again. A store
        written with other feature-changing parameters is refused. For
        datasets larger than memory; not to be combined with ``memory``.
    store_options : dict, default=None
        fsspec ``storage_options`` for a ``store`` URL (e.g. ``endpoint_url``,
        ``key``, ``secret``); credentials otherwise come from the environment.
    n_jobs : int, default=None
        With a ``store``, extraction tasks (each reads, hashes and runs its
        images through the model and appends them to the store) run at once
        on the joblib backend in effect: threads, or under Dask's, the
        cluster's workers. Without a store the forward runs in this process.
        Features do not depend on it.
    verbose : bool, default=False
        Show a progress bar.

    Attributes
    ----------
    patch_size_ : int
        Side of a patch in pixels.
    n_prefix_tokens_ : int
        CLS and register tokens dropped from the patch grid.
    n_features_out_ : int
        Dimension of a patch feature.
    mean_ : tuple of float
        The model's normalisation mean.
    std_ : tuple of float
        The model's normalisation standard deviation.

    See Also
    --------
    MultilevelSegmenter : Clusters these features into label masks.
    ImageFeatures : The per-image record returned by :meth:`transform`.

    Notes
    -----
    Pixel values become floats in [0, 1] by one rule for every kind of input:
    8-bit data (``uint8`` arrays and tensors, 8-bit PIL modes such as "L",
    "P", "RGB", "CMYK") is divided by 255, 16-bit data (``uint16`` arrays, PIL
    "I;16" modes, 16-bit PNG and TIFF files) by 65535; float arrays and tensors
    must already lie in [0, 1] and are refused otherwise. PIL modes "I"
    (32-bit integers) and "F" (32-bit floats, e.g. float TIFF files) have no
    fixed range: a non-negative image is divided by the smallest of 1, 255 and
    65535 that holds all its values, any other is stretched from its own
    minimum and maximum to [0, 1].

    Large images are reduced before they become floats: a JPEG decodes at a
    reduced DCT scale, and every image is averaged over integer boxes while it
    stays at least twice the size it is resized to, so a 10000 x 10000 photo
    is never held as floats at full resolution.

    Features of one image are reproducible only up to float rounding: the
    BLAS library picks the order in which the forward pass's matrix products
    sum from the number of rows (images in the batch times tokens) and of
    threads. With torch 2.14 on 2 threads, ViT-S/16 features of a 64-pixel
    image differ by up to 1.4e-6 between a batch of 3 images and one of 6,
    and by as much between 1 and 8 threads for one image alone. Each record
    therefore carries its image's digest as ``content_key``, and
    :class:`MultilevelSegmenter` seeds its draws from it, never from the
    features' bytes.

    Examples
    --------
    >>> import numpy as np
    >>> from skseg import ViTPatchTransformer
    >>> images = [np.random.default_rng(0).random((64, 48, 3))]
    >>> vit = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False,
    ...                           image_size=64)
    >>> features = vit.fit_transform(images)
    >>> features[0].patches.shape, features[0].image_shape
    ((4, 4, 384), (64, 48))
    """

    _parameter_constraints = {
        "model": [str],
        "pretrained": ["boolean"],
        "weights": [str, HasMethods("__fspath__"), None],
        "facet": [StrOptions(set(FACETS))],
        "layer": [Integral],
        "attention": ["boolean"],
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"auto", "cpu", "cuda", "mps"})],
        "dtype": [StrOptions({"float32", "float16"})],
        "memory": [None, str, HasMethods("__fspath__"), HasMethods(["cache"])],
        "store": [None, str, HasMethods("__fspath__")],
        "store_options": [None, dict],
        "n_jobs": [None, Integral],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model="vit_small_patch8_224.dino",
        *,
        pretrained=True,
        weights=None,
        facet="key",
        layer=-1,
        attention=False,
        image_size=224,
        batch_size=16,
        device="auto",
        dtype="float32",
        memory=None,
        store=None,
        store_options=None,
        n_jobs=None,
        verbose=False,
    ):
        self.model = model
        self.pretrained = pretrained
        self.weights = weights
        self.facet = facet
        self.layer = layer
        self.attention = attention
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.memory = memory
        self.store = store
        self.store_options = store_options
        self.n_jobs = n_jobs
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = []
        tags.non_deterministic = False
        return tags

    def _check_image_size(self):
        size = self.image_size
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or not all(isinstance(s, Integral) and s >= 1 for s in size):
                raise ValueError(
                    f"image_size={size!r} must be an int, a (height, width) pair of "
                    "positive ints, or None."
                )

    def _backbone(self):
        return get_model(
            self.model,
            pretrained=self.pretrained,
            weights=self.weights,
            device=resolve_device(self.device),
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Validate the parameters and build (or load) the model.

        Parameters
        ----------
        X : ignored
            Present for API consistency; no statistics are learned from images.
        y : ignored

        Returns
        -------
        self : ViTPatchTransformer
        """
        self._check_image_size()
        if self.memory is not None:
            warnings.warn(
                "ViTPatchTransformer(memory=...) is deprecated in 0.1 and will be removed "
                "in 0.2: store= is the one feature cache (content-keyed and resumable like "
                "memory=, and it also serves many writers, object storage and datasets "
                "larger than memory). Use store='FOLDER/features.zarr'.",
                FutureWarning, stacklevel=2,
            )
        if self.memory is not None and self.store is not None:
            raise ValueError("pass either memory= (a feature cache) or store= (a "
                             "FeatureStore), not both.")
        check_model_name(self.model)
        model = self._backbone()
        check_facet_support(model, self.model, self.facet, self.layer, self.attention)
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(model)
        self.patch_size_ = int(model.patch_embed.patch_size[0])
        self.n_prefix_tokens_ = int(model.num_prefix_tokens)
        self.mean_ = tuple(float(m) for m in config["mean"])
        self.std_ = tuple(float(s) for s in config["std"])
        block = model.blocks[self.layer]
        if self.facet == "token":
            self.n_features_out_ = int(model.embed_dim)
        else:
            self.n_features_out_ = int(block.attn.num_heads * block.attn.head_dim)
        return self

    def input_size(self, image_shape):
        """The ``(height, width)`` at which the ViT sees an image of shape
        ``(H, W)``: ``image_size``, or the image's own size, rounded to whole
        patches (of a fitted transformer). The patch grid is this divided by
        ``patch_size_``."""
        shape = image_shape
        patch = self.patch_size_
        if self.image_size is None:
            size = shape
        elif isinstance(self.image_size, Integral):
            size = (self.image_size, self.image_size)
        else:
            size = tuple(self.image_size)
        return tuple(_round_to_patch(side, patch) for side in size)

    def extraction_parameters(self):
        """Every parameter that changes the features, as JSON-compatible
        values: what a feature store records, and what names the command
        line's store of them."""
        import timm

        weights = weights_identity(self.weights)
        image_size = self.image_size
        return {
            # v2: large images are box-reduced (JPEGs drafted) before resizing,
            # and PIL modes "I" and "F" are read by their real range.
            "features_version": 2,
            "timm_version": timm.__version__,
            "model": self.model,
            "pretrained": bool(self.pretrained) and self.weights is None,
            "weights": None if weights is None else list(weights),
            "facet": self.facet,
            "layer": self.layer % len(self._backbone().blocks),
            "attention": bool(self.attention),
            "image_size": list(image_size) if isinstance(image_size, (tuple, list))
            else image_size,
            "dtype": self.dtype,
        }

    def _prepare(self, image, size, device):
        """Load at ``size`` (antialiased, no crop, reduced before float) and normalise."""
        mean = torch.tensor(self.mean_).view(3, 1, 1)
        std = torch.tensor(self.std_).view(3, 1, 1)
        return normalised_pixels(image, size, mean, std).to(device, non_blocking=True)

    def transform(self, X):
        """Extract patch features for every image.

        Safe to call from several threads at once (e.g. a grid search with
        the threading backend); features do not depend on what else runs,
        up to float rounding (see Notes).

        Parameters
        ----------
        X : list of images, or a 4-D array or tensor
            Images: files (EXIF orientation honoured), PIL images of any mode,
            arrays ``HxW``, ``HxWx3``, ``HxWx4`` of ``uint8``, ``uint16`` or
            floats in [0, 1], or torch tensors ``CxHxW`` or ``HxWxC`` of the
            same types; or a batch: an array ``(N, H, W, C)`` or a tensor
            ``(N, C, H, W)`` or ``(N, H, W, C)``. The class Notes say how
            values are scaled. All are checked before any forward pass; an
            image smaller than one patch raises ``ImageTooSmallError`` (a
            ``ValueError``) naming it.

        Returns
        -------
        features : FeatureSequence or FeatureStore of ImageFeatures
            One record per image, in input order (with ``store``, a lazy view
            of the store); each record's ``image`` is the input itself (a path
            stays a path), not a copy of its pixels.
        """
        check_is_fitted(self, "patch_size_")
        X = as_image_list(X)
        shapes = check_images(X, min_side=self.patch_size_)
        config = self.extraction_parameters()
        cache = FeatureCache(self.memory, config)
        store = None if self.store is None else self._open_store(config)
        # Every record carries its image's digest, not only cached ones: the
        # segmenter seeds its draws from it (see ImageFeatures.content_key).
        keys = self._content_keys(X)

        records = [cache.get(key) for key in keys]
        todo = [i for i, record in enumerate(records) if record is None]
        if store is not None:
            todo = store.missing(keys)
        # Images of one target size share a batch, so every batch is one tensor.
        by_size = {}
        for i in todo:
            by_size.setdefault(self.input_size(shapes[i]), []).append(i)
        batches = [
            (size, indices[start:start + self.batch_size])
            for size, indices in by_size.items()
            for start in range(0, len(indices), self.batch_size)
        ]
        if store is not None:
            # Each task extracts a run of batches and appends them to the
            # store itself: under joblib's Dask backend the tasks run on the
            # cluster's workers, which share the store's file system or
            # object storage. A task retried after a worker died appends
            # its images again, and the store reads each content key once.
            tasks = [batches[start:start + _BATCHES_PER_TASK]
                     for start in range(0, len(batches), _BATCHES_PER_TASK)]
            Parallel(n_jobs=self.n_jobs)(
                delayed(_extract_into_store)(
                    self, config, {i: (X[i], shapes[i], keys[i])
                                   for _, indices in task for i in indices}, task,
                ) for task in tasks
            )
            # Reopened: the tasks appended through stores of their own. The
            # records point at these inputs, not where the store first saw them.
            return self._open_store(config).select(keys, images=X)
        for indices, features in self._extract(X, batches):
            for i, record in zip(indices, features):
                records[i] = record
                cache.put(keys[i], record)
        return FeatureSequence(
            self._record(record, shapes[i], X[i], keys[i]) for i, record in enumerate(records)
        )

    def _content_keys(self, X):
        """The digest of every image. Files going into a store are read and
        hashed where the extraction runs (under joblib's Dask backend, on
        the workers): a dataset's bytes never all pass through this process."""
        if self.store is None or not all(isinstance(x, (str, os.PathLike)) for x in X):
            return [content_hash(image) for image in X]
        parts = Parallel(n_jobs=self.n_jobs)(
            delayed(_hash_files)(X[start:start + _FILES_PER_HASH_TASK])
            for start in range(0, len(X), _FILES_PER_HASH_TASK)
        )
        return [key for part in parts for key in part]

    def _open_store(self, config):
        return FeatureStore(self.store, extraction=config, storage_options=self.store_options)

    def _extract(self, images, batches):
        """``(indices, records)`` for each batch. The next batches are decoded
        in threads while this one runs through the model (as a DataLoader's
        workers prefetch), never more than ``_PREFETCH_BATCHES`` ahead, so
        memory stays bounded by a few batches of pixels."""
        from tqdm.auto import tqdm

        model = self._backbone()
        device = next(model.parameters()).device
        dtype = np.dtype(self.dtype)
        total = sum(len(indices) for _, indices in batches)
        with ThreadPoolExecutor(max_workers=_DECODE_THREADS, initializer=_decoding_thread,
                                initargs=(sklearn.get_config(),)) as pool, tqdm(
            total=total, disable=not self.verbose, unit="img", desc="ViT features"
        ) as progress:

            def submit(batch):
                size, indices = batch
                return [pool.submit(self._prepare, images[i], size, device) for i in indices]

            pending = deque(submit(batch) for batch in batches[:_PREFETCH_BATCHES])
            try:
                for b, (size, indices) in enumerate(batches):
                    tensors = [future.result() for future in pending.popleft()]
                    if b + _PREFETCH_BATCHES < len(batches):
                        pending.append(submit(batches[b + _PREFETCH_BATCHES]))
                    patches, cls, attention = forward_facets(
                        model, torch.stack(tensors), facet=self.facet, layer=self.layer,
                        attention=self.attention,
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

    def _record(self, record, image_shape, image, content_key):
        return ImageFeatures(
            patches=record["patches"],
            cls=record["cls"],
            attention=record["attention"],
            image_shape=image_shape,
            image=image,
            patch_size=self.patch_size_,
            content_key=content_key,
        )


# Batches of images per extraction task writing into a store, and image
# files per hashing task.
_BATCHES_PER_TASK = 8
_FILES_PER_HASH_TASK = 256
# Threads decoding images for the forward pass, and batches decoded ahead of it.
_DECODE_THREADS = 4
_PREFETCH_BATCHES = 2


def _decoding_thread(config):
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


def _hash_files(paths):
    return [content_hash(path) for path in paths]


def _extract_into_store(transformer, config, items, batches):
    """Extract ``batches`` of ``items`` (index -> (image, shape, key)) and
    append each batch to the transformer's store as soon as it is computed.

    Appends run in a background thread while the next batch goes through the
    model, one batch at a time and in order: at most one computed batch waits
    in memory, an error in a write surfaces at the next batch, and a batch
    whose write has started is committed before this returns or raises (an
    interrupted run keeps it).
    """
    store = transformer._open_store(config)
    images = {i: image for i, (image, _, _) in items.items()}

    config = sklearn.get_config()  # scikit-learn's settings are per thread

    def append(indices, records):
        with sklearn.config_context(**config):  # working_memory sizes the commits
            store.extend(
                (transformer._record(record, items[i][1], items[i][0], items[i][2])
                 for i, record in zip(indices, records)),
                content_keys=[items[i][2] for i in indices],
            )

    with ThreadPoolExecutor(max_workers=1) as writer:
        writing = None
        for indices, records in transformer._extract(images, batches):
            if writing is not None:
                writing.result()
            writing = writer.submit(append, indices, records)
        if writing is not None:
            writing.result()
