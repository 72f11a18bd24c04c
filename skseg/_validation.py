"""The constraint types of scikit-learn's parameter validation.

They live in a private module of scikit-learn (stable since 1.2; we require
>= 1.6), so they are imported in this one place. The validation itself runs
through ``_fit_context``, reached through the ``sklearn-compat`` package.
"""

from sklearn.utils._param_validation import (  # noqa: F401  (re-exported)
    HasMethods,
    Interval,
    StrOptions,
)
