"""ViTPatchTransformer: per-image patch attention features from a timm ViT.

The estimator: its parameters, their validation, and ``transform``'s plan
(check every image, find the ones a cache or store already holds, group the
rest into batches of one input size). Running the batches through the model,
and into a store, is in ``_extraction``.
"""

import warnings
from numbers import Integral

from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from ._backbone import check_facet_support
from ._cache import FeatureCache
from ._extraction import (
    backbone,
    content_keys,
    extract_batches,
    extract_into_store,
    feature_record,
    open_store,
)
from ._features import FACETS, FeatureSequence
from ._image_checks import as_image_list, check_images
from ._validation import HasMethods, Interval, StrOptions
from ._weights import check_model_name, weights_identity


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
        model = backbone(self)
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
            "layer": self.layer % len(backbone(self).blocks),
            "attention": bool(self.attention),
            "image_size": list(image_size) if isinstance(image_size, (tuple, list))
            else image_size,
            "dtype": self.dtype,
        }

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
        store = None if self.store is None else open_store(self, config)
        # Every record carries its image's digest, not only cached ones: the
        # segmenter seeds its draws from it (see ImageFeatures.content_key).
        keys = content_keys(self, X)

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
            extract_into_store(self, config, X, shapes, keys, batches)
            # Reopened: the tasks appended through stores of their own. The
            # records point at these inputs, not where the store first saw them.
            return open_store(self, config).select(keys, images=X)
        for indices, features in extract_batches(self, X, batches):
            for i, record in zip(indices, features):
                records[i] = record
                cache.put(keys[i], record)
        return FeatureSequence(
            feature_record(self, record, shapes[i], X[i], keys[i])
            for i, record in enumerate(records)
        )
