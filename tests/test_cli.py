"""The skseg command line: options, help, messages, segment runs and demo."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg._cli.parser import build_parser, main
from skseg._cli.segment import _build_pipeline

from ._cli_helpers import FAST, photo_folder, save_scenes  # noqa: F401
from .conftest import TINY_MODEL, n_images_through_vit


def test_segment_a_folder_writes_palette_pngs(photo_folder, tmp_path, vit_forwards):
    out = tmp_path / "out"
    assert main(["segment", str(photo_folder), "-r", "-o", str(out), "--overlay", *FAST]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["holiday/img1.png", "holiday/img3.png", "holiday/img5.png",
                       "img0.png", "img2.png", "img4.png"]
    with Image.open(out / "holiday" / "img3.png") as png:
        assert png.mode == "P" and png.size == (64, 48)
        assert np.asarray(png).max() <= 2
    assert (out / "img0_overlay.jpg").is_file()
    assert n_images_through_vit(vit_forwards) == 6
    before = (out / "img0.png").stat().st_mtime_ns
    assert main(["segment", str(photo_folder), "-r", "-o", str(out), "--force", *FAST]) == 0
    assert (out / "img0.png").stat().st_mtime_ns != before
    assert n_images_through_vit(vit_forwards) == 6  # the feature cache skipped the ViT


def test_unreadable_and_too_small_images_are_skipped_or_stop_a_strict_run(photo_folder,
                                                                         tmp_path, capsys):
    (photo_folder / "broken.jpg").write_bytes(b"not an image")
    Image.new("RGB", (10, 40)).save(photo_folder / "thin.png")  # narrower than a patch
    out = tmp_path / "out"
    assert main(["segment", str(photo_folder), "-o", str(out), *FAST]) == 1
    lines = capsys.readouterr().err.splitlines()
    broken = [line for line in lines if "broken.jpg" in line]
    thin = [line for line in lines if "thin.png" in line]
    assert broken and "skipped" in broken[0]
    assert thin and "skipped" in thin[0] and "patch" in thin[0]
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img2.png", "img4.png"]
    for name in ("broken.jpg", "thin.png"):
        strict = tmp_path / f"strict-{name}"
        inputs = [str(photo_folder / "img0.png"), str(photo_folder / name)]
        assert main(["segment", *inputs, "-o", str(strict), "--strict", *FAST]) == 2
        assert name in capsys.readouterr().err and not strict.exists()


def test_globs_and_files_as_inputs(photo_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", str(photo_folder / "img0.png"),
                 str(photo_folder / "holiday" / "*.png"), "-o", str(out), *FAST]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png", "img3.png",
                                                        "img5.png"]


@pytest.mark.slow
def test_a_voc_root_with_a_list_segments_only_the_listed_photos(tmp_path):
    voc = tmp_path / "VOC2012"
    paths = save_scenes(voc / "JPEGImages", 5, prefix="2007_00000")
    (voc / "SegmentationClass").mkdir()
    for path in paths:
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(voc / "SegmentationClass" / path.name)
    listing = tmp_path / "val.txt"
    listing.write_text("2007_000000\n2007_000002\n2007_000003\n2007_000004\n")
    out = tmp_path / "out"
    assert main(["segment", str(voc), "-r", "--list", str(listing), "--exclude", "*0004*",
                 "-o", str(out), *FAST]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "JPEGImages/2007_000000.png", "JPEGImages/2007_000002.png",
        "JPEGImages/2007_000003.png"]


@pytest.mark.parametrize(
    "argv, message",
    [(["segment", "nothing-here", "-o", "x"], "neither a file"),
     (["segment", "{empty}", "-o", "x"], "no input images"),
     (["segment", "{photos}", "-o", "x", "--model", TINY_MODEL, "-q"], "--weights FILE"),
     (["segment", "{photos}", "-o", "x", "--model", TINY_MODEL, "-q"], "--random-weights"),
     (["segment", "{photos}", "-o", "x", "--model", "resnet18", "--random-weights", "-q"],
      "model='resnet18' is not a Vision Transformer"),
     (["segment", "{photos}", "-o", "x", "--model", "no_such_net", "--random-weights"],
      "not a timm model"),
     (["evaluate", "{empty}", "{empty}"], "no PNG masks")],
)
def test_user_errors_are_one_line_without_traceback(argv, message, photo_folder, tmp_path,
                                                    capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(empty=empty, photos=photo_folder) for a in argv]
    argv = [str(tmp_path / a) if a == "x" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and err.startswith("skseg: error:")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("options, message", [
    (["--n-categories", "0"], "at least 1"),
    (["--random-state", "-1"], "between 0 and 2**32 - 1"),
    (["--n-classes", "256"], "above 255"),
    (["--n-classes", "0"], "at least 1"),
    (["--image-size", "big"], "HEIGHTxWIDTH"),
    (["--min-region-size", "1.5"], "fraction"),
    (["--refine-dilations", "1,x"], "whole numbers"),
    (["--n-dataset-clusters", "1"], "at least 2"),
    (["--max-samples", "1"], "at least 2"),
    (["--refine-iter", "-1"], "at least 0"),
    (["--refine", "densecrf"], "invalid choice"),
    (["--crf-radius", "0"], "at least 1"),
    (["--crf-bilateral-rgb", "0"], "must be above 0"),
    (["--crf-gaussian-weight", "-1"], "must be at least 0"),
    (["--crf-bilateral-xy", "inf"], "must be above 0 and finite"),
    (["--crf-gaussian-xy", "x"], "is not a number"),
])
def test_bad_option_values_stop_the_parser(options, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x", "-o", "y", *options])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_class_count_is_chosen_without_labels_by_default():
    args = build_parser().parse_args(["segment", "x", "-o", "y"])
    assert args.n_classes == "auto" and args.max_classes == 30
    args = build_parser().parse_args(["segment", "x", "-o", "y", "--n-classes", "7",
                                      "--n-categories", "auto"])
    assert args.n_classes == 7 and args.n_categories == "auto"


def test_refinement_options_default_to_the_estimators_defaults():
    # The CRF refines by default, with the same kernels from either entry point.
    args = vars(build_parser().parse_args(["segment", "x", "-o", "y"]))
    defaults = MultilevelSegmenter().get_params()
    keys = [key for key in defaults if key.startswith(("refine", "crf_"))]
    assert len(keys) == 11 and defaults["refine"] == args["refine"] == "crf"
    assert {key: args[key] for key in keys} == {key: defaults[key] for key in keys}


@pytest.mark.parametrize("case", ["image size", "output is a file", "output under a file",
                                  "model under a file", "model exists", "model is an input",
                                  "preview exists"])
def test_option_and_path_errors_come_before_any_feature(case, photo_folder, tmp_path,
                                                        vit_forwards, capsys):
    out, blocker = tmp_path / "out", tmp_path / "a-file"
    blocker.write_text("x")
    options = {
        "image size": ["--image-size", "16"],
        "output is a file": [],
        "output under a file": [],
        "model under a file": ["--save-model", str(blocker / "m.skops")],
        "model exists": ["--save-model", str(blocker)],
        "model is an input": ["--save-model", str(photo_folder / "img0.png"), "--force"],
        "preview exists": ["--preview", str(blocker)],
    }[case]
    if case == "output is a file":
        out = blocker
    elif case == "output under a file":
        out = blocker / "out"
    before = blocker.read_text(), (photo_folder / "img0.png").read_bytes()
    assert main(["segment", str(photo_folder), "-o", str(out), *FAST, *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skseg: error:") and len(err.strip().splitlines()) == 1
    assert vit_forwards == []
    assert not (tmp_path / "out").exists()
    assert (blocker.read_text(), (photo_folder / "img0.png").read_bytes()) == before


def _help(argv, capsys):
    """What ``skseg ARGV --help`` prints."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _help_entries(text):
    """The argument lines of a help text: {invocation: its description}."""
    entries, current = {}, None
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line in ("positional arguments:", "options:"))
    for line in lines[start:]:
        if line.startswith("  ") and line[2] != " ":  # an argument, maybe its description
            current, _, description = line.strip().partition("  ")
            entries[current] = description.strip()
        elif line.startswith("    ") and current is not None:  # its description goes on
            entries[current] = f"{entries[current]} {line.strip()}".strip()
        else:  # a section title or a blank line
            current = None
    return entries


def _option_names(invocation):
    return re.findall(r"(?<![\w-])-{1,2}\w[\w-]*", invocation)


def _required_options(text):
    """The options the usage line shows outside brackets."""
    usage = " ".join(text.split("\n\n")[0].split())
    while re.search(r"\[[^\[\]]*\]", usage):
        usage = re.sub(r"\[[^\[\]]*\]", "", usage)
    return set(_option_names(usage))


COMMANDS = ["segment", "evaluate", "report", "demo", "export"]


def test_the_help_lists_every_command_with_what_it_does(capsys):
    text = _help([], capsys)
    assert re.search(r"\{([\w,]+)\}", text)[1].split(",") == COMMANDS
    for command in COMMANDS:  # a line each: the name, then what it does
        assert re.search(rf"^    {command} +\S", text, re.MULTILINE), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help_describes_every_option_and_shows_its_default(command, capsys):
    text = _help([command], capsys)
    entries = _help_entries(text)
    required = _required_options(text)
    options = [invocation for invocation in entries if _option_names(invocation)]
    assert len(options) >= 4
    for invocation, description in entries.items():
        assert description, f"skseg {command}: {invocation} has no description"
    for invocation in options:
        names, description = set(_option_names(invocation)), entries[invocation]
        if "--help" in names:
            continue
        if names & required:  # a required option has no default to show
            assert "(default" not in description, f"skseg {command}: {invocation}"
        else:
            assert "(default: " in description, f"skseg {command}: {invocation}"


def test_segment_help_shows_the_defaults(capsys):
    text = " ".join(_help(["segment"], capsys).split())
    for shown in ("(default: vit_small_patch8_224.dino)", "(default: 0.01)",
                  "(default: (1, 2, 4, 8, 12, 24))", "(default: vote)", "(default: 20)"):
        assert shown in text


# Parameters with no option of their own, and why.
_NOT_OPTIONS = {
    "pretrained": "--random-weights",
    "attention": "implied by --foreground attention, the only user of it",
    "memory": "--cache / --no-cache (a FeatureStore, not this cache)",
    "store": "--cache / --no-cache",
    "store_options": "a --cache URL takes its credentials from the environment",
    "verbose": "-q",
    "region_encoder": "built from the --model options by --region crop",
    "batch_size": "--batch-size (ViT); the pixel-stage batch never changes the masks",
    "chunk_size": "bounds memory only; the masks do not depend on it",
    "labels_path": "the command writes every mask as a PNG itself",
    "labels_options": "as labels_path",
}


def _segment_options(capsys):
    """The long options ``skseg segment --help`` shows, as parameter names."""
    return {name[2:].replace("-", "_") for invocation in _help_entries(_help(["segment"], capsys))
            for name in _option_names(invocation) if name.startswith("--")}


def test_every_estimator_parameter_is_an_option_or_listed_as_absent(capsys):
    options = _segment_options(capsys)
    parameters = {estimator.__name__: set(estimator().get_params())
                  for estimator in (ViTPatchTransformer, MultilevelSegmenter)}
    for name, names in parameters.items():
        missing = names - options - set(_NOT_OPTIONS)
        assert not missing, f"{name} parameters without an option: {missing}"
    # The list of absent ones stays true: each is a parameter, and none has an option
    # (batch_size is the ViT's --batch-size; only the segmenter's has none).
    absent = set(_NOT_OPTIONS) - {"batch_size"}
    assert absent <= set.union(*parameters.values()) and not absent & options


def test_options_reach_the_estimators(tmp_path):
    args = build_parser().parse_args([
        "segment", "x", "-o", str(tmp_path), "--model", TINY_MODEL, "--random-weights",
        "--facet", "value", "--layer", "-2", "--image-size", "32x48", "--dtype", "float16",
        "--n-classes", "3", "--n-categories", "4", "--n-dataset-clusters", "3",
        "--foreground", "attention", "--consensus", "intersection", "--refine", "crf",
        "--refine-iter", "3", "--refine-dilations", "1,2", "--refine-max-side", "64",
        "--crf-radius", "4", "--crf-stride", "1", "--crf-bilateral-weight", "2.5",
        "--crf-bilateral-xy", "3", "--crf-bilateral-rgb", "0.1", "--crf-gaussian-weight", "0",
        "--crf-gaussian-xy", "2",
        "--region", "crop", "--min-region-size", "50", "--max-samples", "500",
        "--max-iter", "7", "--n-init", "2", "--metric", "euclidean", "--random-state", "5",
        "--n-jobs", "2", "--no-cache"])
    vit, seg = (step for _, step in _build_pipeline(args).steps)
    assert vit.get_params() | {"verbose": None} == dict(
        model=TINY_MODEL, pretrained=False, weights=None, facet="value", layer=-2,
        attention=True, image_size=(32, 48), batch_size=16, device="auto", dtype="float16",
        memory=None, store=None, store_options=None, n_jobs=2, verbose=None)
    params = seg.get_params(deep=False)
    encoder = params.pop("region_encoder")
    expected = dict(
        n_classes=3, n_categories=4, n_dataset_clusters=3, foreground="attention",
        consensus="intersection", refine="crf", refine_iter=3, refine_dilations=(1, 2),
        refine_max_side=64, crf_radius=4, crf_stride=1, crf_bilateral_weight=2.5,
        crf_bilateral_xy=3.0, crf_bilateral_rgb=0.1, crf_gaussian_weight=0.0,
        crf_gaussian_xy=2.0, region="crop", min_region_size=50, max_samples=500,
        max_iter=7, n_init=2, metric="euclidean", batch_size=16, device="auto",
        random_state=5, n_jobs=2)
    assert {key: params[key] for key in expected} == expected
    assert isinstance(encoder, ViTPatchTransformer) and encoder.facet == "value"


@pytest.mark.slow
def test_warnings_are_one_clean_line_and_quiet_silences_them(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    loud = [o for o in FAST if o != "-q"]
    assert main(["segment", str(photos), "-o", str(tmp_path / "a"), "--n-categories", "9",
                 *loud]) == 0
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if "n_categories" in line]
    assert warning_lines == ["skseg: warning: n_categories=9 exceeds the 3 images; using 3."]
    assert "warnings.warn" not in err and "UserWarning" not in err
    assert main(["segment", str(photos), "-o", str(tmp_path / "b"), "--n-categories", "9",
                 *FAST]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_demo_runs_offline_and_says_so(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "demo"), "--n-images", "6"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "plain K-means" in out
    with Image.open(tmp_path / "demo" / "demo.png") as figure:
        assert figure.size == (4 * (160 + 4), 18 + 6 * (160 + 4))


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "skseg", "--help"], capture_output=True,
                            text=True, check=True)
    assert "segment" in result.stdout and "evaluate" in result.stdout


# run_and_exit with a stand-in command: argv[1] says how the command ends
# and what it leaves behind, and an object freed only by the interpreter's
# teardown says whether that teardown ran.
_EXITING = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    import skseg._cli.parser as parser

    class Freed:
        def __del__(self):
            print("teardown ran", flush=True)

    kept_until_teardown = Freed()
    atexit.register(print, "atexit handlers ran")

    def command(argv):
        print("the command's output", end="")  # unflushed
        if sys.argv[1] == "thread":
            def late_write():
                time.sleep(0.3)
                Path(sys.argv[2]).write_text("written")
            threading.Thread(target=late_write).start()
        return 130 if sys.argv[1] == "interrupted" else 1

    parser.main = command
    parser.run_and_exit([])
""")


def _run_exiting(how, late="", **kwargs):
    buffered = {name: value for name, value in os.environ.items()
                if name != "PYTHONUNBUFFERED"}  # so that an unflushed output is lost
    return subprocess.run([sys.executable, "-c", _EXITING, how, str(late)],
                          capture_output=True, text=True, env=buffered, **kwargs)


@pytest.mark.parametrize("how", ["finished", "thread", "interrupted"])
def test_the_program_exits_with_the_status_after_atexit_without_teardown(tmp_path, how):
    late = tmp_path / "late.txt"
    result = _run_exiting(how, late)
    assert result.returncode == (130 if how == "interrupted" else 1), result.stderr
    assert result.stdout.startswith("the command's output")
    assert "atexit handlers ran" in result.stdout
    if how == "finished":  # the point: the teardown of torch's and timm's objects is skipped
        assert "teardown ran" not in result.stdout
    else:  # a thread at work, or a stopped command's: the normal exit waits
        assert "teardown ran" in result.stdout
    if how == "thread":
        assert late.read_text() == "written"


def test_the_program_keeps_its_status_when_its_reader_has_gone():
    # skseg segment ... | head: the command's work is done; a closed pipe
    # at the final flush must not turn its status into a traceback.
    buffered = {name: value for name, value in os.environ.items()
                if name != "PYTHONUNBUFFERED"}
    program = subprocess.Popen([sys.executable, "-c", _EXITING, "finished", ""],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=buffered)
    program.stdout.close()  # long before the program has started
    assert program.wait(timeout=60) == 1
    assert b"Traceback" not in program.stderr.read()
    program.stderr.close()


def test_the_program_started_without_stdout_keeps_its_status():
    result = _run_exiting("finished", stdout=None, preexec_fn=lambda: os.close(1))
    assert result.returncode == 1 and "Traceback" not in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_final_write_is_reported_as_python_does():
    # On a full disk the output is lost: the status must say so (120, as
    # Python's own exit gives), never 0 or the command's.
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-c", _EXITING, "finished", ""],
                                stdout=full, stderr=subprocess.PIPE, text=True,
                                env={name: value for name, value in os.environ.items()
                                     if name != "PYTHONUNBUFFERED"})
    assert result.returncode == 120
    assert "No space left on device" in result.stderr


def test_the_console_script_is_the_quick_exit():
    import tomllib
    from pathlib import Path

    import skseg._cli

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    script = tomllib.loads(pyproject.read_text())["project"]["scripts"]["skseg"]
    module, name = script.split(":")
    assert getattr(__import__(module, fromlist=[name]), name) is skseg._cli.run_and_exit


def test_the_library_never_imports_the_command_line():
    # The dependency goes one way: skseg._cli uses skseg.io and the
    # estimators, never the reverse (only ``python -m skseg`` starts it).
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "skseg"
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if relative.parts[0] == "_cli" or relative == Path("__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [getattr(node, "module", None) or "", *(a.name for a in node.names)]
            assert not any("_cli" in name.split(".") for name in names), (relative, names)


def test_segment_shows_every_stage_the_auto_choice_and_the_random_weights(tmp_path,
                                                                          capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 4)
    loud = [option for option in FAST if option not in ("-q", "--n-classes", "2")]
    assert main(["segment", str(photos), "-o", str(tmp_path / "out"), "--no-cache",
                 "--n-classes", "auto", "--max-classes", "3", *loud]) == 0
    err = capsys.readouterr().err
    assert f"The ViT ({TINY_MODEL}) has RANDOM weights" in err
    for stage in ("survey", "dataset level", "category level", "image level",
                  "labelling"):
        assert f"MultilevelSegmenter: {stage}" in err
    for bar in ("ViT features", "survey", "dataset level", "image level + refinement",
                "writing"):
        assert f"{bar}: 100%" in err
    assert "--n-classes auto chose " in err and "(silhouette, higher is better; best " in err
