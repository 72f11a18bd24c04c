"""Re-exports imported on first use (PEP 562), so that ``import skseg`` and
the command line's ``--help`` do not pay for torch and scikit-learn."""

import importlib
import sys


def lazy_exports(package, exports):
    """``__getattr__`` and ``__dir__`` for ``package`` re-exporting names.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : dict of str to str
        Each public name and the private module (relative to ``package``,
        e.g. ``"._segmenter"``) that defines it, or ``".name"`` for a public
        submodule exported as itself. The module is imported when
        the name is first looked up (``from skseg import X`` included) and
        the name is then set on the package, so later look-ups are plain.

    Returns
    -------
    __getattr__, __dir__ : callables
        To assign at module level in the package's ``__init__``.
    """

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name], package)
        # A public submodule (``skseg.io``) is exported as itself.
        value = module if exports[name] == f".{name}" else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
