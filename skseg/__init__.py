"""skseg: unsupervised semantic segmentation with self-supervised ViT features.

The public API is re-exported here; implementations live in private modules.
Each name's module is imported on first use, so that ``import skseg`` (and
``skseg --help``) does not load torch or scikit-learn.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "CorruptedStoreError": "._store",
    "FeatureSequence": "._features",
    "FeatureStore": "._store",
    "ForegroundWarning": "._diagnostics",
    "ImageError": "._images",
    "ImageFeatures": "._features",
    "ImageTooSmallError": "._images",
    "LabelMasks": "._regions",
    "MultilevelSegmenter": "._segmenter",
    "ViTPatchTransformer": "._transformer",
    "WeightsUnavailableError": "._weights",
    # Public submodules, there after ``import skseg`` as they would be eagerly.
    "datasets": ".datasets",
    "io": ".io",
    "metrics": ".metrics",
}

__all__ = [
    "CorruptedStoreError",
    "FeatureSequence",
    "FeatureStore",
    "ForegroundWarning",
    "ImageError",
    "ImageFeatures",
    "ImageTooSmallError",
    "LabelMasks",
    "MultilevelSegmenter",
    "ViTPatchTransformer",
    "WeightsUnavailableError",
    "__version__",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see
    from ._features import FeatureSequence, ImageFeatures
    from ._images import ImageError, ImageTooSmallError
    from ._regions import LabelMasks
    from ._diagnostics import ForegroundWarning
    from ._segmenter import MultilevelSegmenter
    from ._store import CorruptedStoreError, FeatureStore
    from ._transformer import ViTPatchTransformer
    from ._weights import WeightsUnavailableError
