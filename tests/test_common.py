"""scikit-learn's data-free estimator checks, run by hand.

Our X is a list of images or of per-image features, so the checks that feed
tabular data do not apply; these do, and each estimator must pass them.
"""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as checks

from skseg import MultilevelSegmenter, ViTPatchTransformer

DATA_FREE_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_do_not_raise_errors_in_init_or_set_params",
    # nilearn's extra checks for estimators whose X is not a table.
    "check_mixin_order",
    "check_estimators_unfitted",
]
ESTIMATORS = [ViTPatchTransformer(), MultilevelSegmenter()]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_data_free_scikit_learn_checks(estimator, check):
    run = getattr(checks, check, None)
    if run is None:
        pytest.skip(f"{check} is not in this scikit-learn")
    run(type(estimator).__name__, estimator)


def test_transform_before_fit_is_refused():
    checks.check_transformers_unfitted("ViTPatchTransformer", ViTPatchTransformer())
    # On a valid image, so that only the fitted check can refuse it.
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ViTPatchTransformer().transform([np.zeros((32, 32, 3), np.uint8)])
