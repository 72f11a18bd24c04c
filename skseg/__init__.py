"""skseg: unsupervised semantic segmentation with self-supervised ViT features.

The public API is re-exported here; implementations live in private modules.
"""

from ._features import FeatureSequence, ImageFeatures
from ._images import ImageError, ImageTooSmallError
from ._regions import LabelMasks
from ._segmenter import ForegroundWarning, MultilevelSegmenter
from ._store import CorruptedStoreError, FeatureStore
from ._transformer import ViTPatchTransformer
from ._weights import WeightsUnavailableError

__version__ = "0.1.0.dev0"

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
