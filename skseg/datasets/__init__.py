"""Dataset loaders and synthetic data generators."""

from ._synthetic import make_patch_features

__all__ = ["make_patch_features"]
