"""``import skseg`` and the command line's parsing load no heavy library:
``skseg --help`` and argument errors answer before torch or scikit-learn is
imported, while every public name still resolves."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import skseg
import skseg.datasets

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn", "timm", "scipy", "zarr", "PIL", "joblib")

# Runs the command line on argv[1:] in a fresh interpreter and prints the
# heavy modules it imported.
_LOADED_BY_MAIN = textwrap.dedent("""
    import runpy
    import sys

    argv = sys.argv[1:]
    sys.argv = ["skseg", *argv]
    try:
        runpy.run_module("skseg", run_name="__main__")
    except SystemExit:
        pass
    heavy = {heavy!r}
    print("loaded:", *sorted(name for name in heavy if name in sys.modules))
""").format(heavy=HEAVY)


def _heavy_modules_loaded(*argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([sys.executable, "-c", _LOADED_BY_MAIN, *argv],
                            capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    *answer, loaded = result.stdout.strip().splitlines()
    assert loaded.startswith("loaded:"), result.stderr
    return "\n".join(answer) + result.stderr, loaded.split()[1:]


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["segment", "--help"],
    ["evaluate", "--help"],
    ["segment", "photos", "-o", "masks", "--n-classes", "0"],  # a bad value
    ["segment", "photos"],  # a missing option
    ["unknown-command"],
])
@pytest.mark.slow
def test_help_and_argument_errors_import_no_heavy_library(argv):
    answer, loaded = _heavy_modules_loaded(*argv)
    assert "usage: skseg" in answer  # argparse answered, help or error
    assert loaded == []


def test_importing_skseg_imports_no_heavy_library():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = (f"import sys, skseg, skseg.datasets; print(' '.join(n for n in {HEAVY!r} "
            "if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("package", [skseg, skseg.datasets])
def test_every_public_name_resolves_and_is_listed(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert value is not None
        assert name in dir(package)
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # noqa: B018


def test_from_import_gives_the_defining_modules_objects():
    from skseg import MultilevelSegmenter, ViTPatchTransformer
    from skseg._segmenter import MultilevelSegmenter as defined_segmenter
    from skseg._transformer import ViTPatchTransformer as defined_transformer
    from skseg.datasets import make_scenes
    from skseg.datasets._synthetic import make_scenes as defined_make_scenes

    assert MultilevelSegmenter is defined_segmenter
    assert ViTPatchTransformer is defined_transformer
    assert make_scenes is defined_make_scenes
    assert MultilevelSegmenter.__module__ == "skseg._segmenter"  # pickles name it there


@pytest.mark.parametrize("package", [skseg, skseg.datasets])
def test_all_lists_exactly_the_lazy_exports(package):
    submodules = {name for name, module in package._EXPORTS.items() if module == f".{name}"}
    assert set(package.__all__) - {"__version__"} == set(package._EXPORTS) - submodules


def test_public_submodules_are_there_after_import_skseg():
    # As an eager package's would be: skseg.io.TRUSTED_TYPES, as the docs write it.
    assert skseg.io.TRUSTED_TYPES and skseg.datasets.load_voc and skseg.metrics.mean_iou
    assert {"io", "datasets", "metrics"} <= set(dir(skseg))
