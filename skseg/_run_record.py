"""What produced the masks in an output folder, and saved pipelines.

``OUTDIR/.skseg-run.json`` records the fit behind the masks (the parameters and
the training images' content, or the saved model's content) and, per output,
the content of the image it came from. A later run compares its own fit with
the record before computing anything, so masks of two different fits never
mix in one folder. Outputs written since the record was last rewritten are
lines of ``OUTDIR/.skseg-run.journal``, one appended per mask: a run of any
length rewrites the whole record a few times, not once every few masks.

Fitted pipelines are saved with :mod:`skops.io`, which builds only the types
it is told to trust and never runs code from the file.
"""

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from ._io import write_atomically
from ._inputs import UserError

RECORD_NAME = ".skseg-run.json"
JOURNAL_NAME = ".skseg-run.journal"
# Held by the run writing in the folder; the other file says which run that is.
_LOCK_NAME = ".skseg-run.lock"
_HOLDER_NAME = ".skseg-run.holder.json"
_RECORD_FORMAT = "skseg-run-v1"

# Parameters that change how fast a run goes, never its masks.
_RUNTIME_PARAMETERS = {"batch_size", "device", "memory", "verbose", "n_jobs"}


def _parameters(estimator):
    """An estimator's parameters that can change its results, as JSON values;
    a weight file by its identity (path, size and mtime)."""
    from ._weights import weights_identity

    parameters = {}
    for key, value in estimator.get_params(deep=False).items():
        if key in _RUNTIME_PARAMETERS:
            continue
        if key == "weights" and value is not None:
            value = list(weights_identity(value))
        parameters[key] = _jsonable(value)
    return parameters


def _jsonable(value):
    """Parameters as JSON values; estimators as their class and parameters."""
    if hasattr(value, "get_params"):
        return {"estimator": type(value).__name__, "parameters": _parameters(value)}
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def result_parameters(pipeline):
    """Every parameter of the pipeline's steps that can change the masks."""
    return {f"{step}__{key}": value for step, estimator in pipeline.steps
            for key, value in _parameters(estimator).items()}


def describe_fit(*, parameters=None, training=None, model=None):
    """The identity of a fit: fitted here (``parameters`` and the ordered
    content digests of the ``training`` images) or loaded (``model`` digest).
    The skseg version is part of it: another version may segment differently."""
    from . import __version__

    if model is not None:
        return {"model": model, "skseg": __version__}
    return {"parameters": parameters, "training": training, "skseg": __version__}


def fit_differences(old, new):
    """A short sentence saying how two fit identities differ."""
    if ("model" in old) != ("model" in new):
        return "one run fitted its pipeline, the other loaded a saved model"
    reasons = []
    if old.get("skseg") != new.get("skseg"):
        reasons.append(f"skseg was version {old.get('skseg')}, now {new.get('skseg')}")
    if "model" in new:
        if old.get("model") != new.get("model"):
            reasons.append("the saved model files differ")
        return "; ".join(reasons)
    old_parameters, new_parameters = old.get("parameters") or {}, new["parameters"]
    changed = sorted(key for key in old_parameters.keys() | new_parameters.keys()
                     if old_parameters.get(key) != new_parameters.get(key))
    for key in changed[:3]:
        reasons.append(f"{key.split('__', 1)[-1]} was {old_parameters.get(key)!r}, "
                       f"now {new_parameters.get(key)!r}")
    if len(changed) > 3:
        reasons.append(f"{len(changed) - 3} more parameters differ")
    old_training, new_training = old.get("training") or [], new["training"]
    if old_training != new_training:
        added = len(set(new_training) - set(old_training))
        removed = len(set(old_training) - set(new_training))
        reasons.append(f"the training images differ ({added} added, {removed} removed"
                       + (", or their order" if not added and not removed else "") + ")")
    return "; ".join(reasons)


def read_record(output):
    """The record of ``output``, or None when there is none."""
    path = Path(output) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
            raise ValueError("unknown format")
        _check_fit(record.get("fit"))
        for table in ("outputs", "skipped"):
            entries = record.get(table)
            if not isinstance(entries, dict) or not all(
                    isinstance(entry, dict) for entry in entries.values()):
                raise ValueError(f"no {table} table")
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise UserError(f"{path} is not a skseg run record ({reason}); remove it, or use "
                        "--force to rewrite every output.") from None
    _replay_journal(Path(output), record)
    return record


def _replay_journal(output, record):
    """Add to ``record`` the outputs its journal lists.

    Only lines of the record's own journal count: a rewrite of the record
    starts a new one (a new ``journal`` token), so the lines of an older
    journal, left by a run stopped between the rewrite and the removal of
    that journal, are not taken for outputs of the new record. A torn last
    line (a run killed while appending) is skipped.
    """
    token = record.get("journal")
    try:
        lines = (output / JOURNAL_NAME).read_bytes().split(b"\n") if token else []
    except FileNotFoundError:
        return
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("journal") == token \
                and isinstance(item.get("name"), str) and isinstance(item.get("entry"), dict):
            record["outputs"][item["name"]] = item["entry"]
            record["skipped"].pop(item["name"], None)


def image_unchanged(entry):
    """Whether the image an output was made from is still at its recorded
    path with the content it had (False when it moved, went or changed)."""
    import hashlib

    try:
        with open(entry["input"], "rb") as image:
            return hashlib.file_digest(image, "sha1").hexdigest() == entry.get("sha1")
    except (OSError, KeyError, TypeError):
        return False


def record_output(output, record, name, entry):
    """Account for one written output: in ``record`` and, at once, on disk as
    one line appended to the journal (the record file is not rewritten)."""
    record["outputs"][name] = entry
    record["skipped"].pop(name, None)
    line = json.dumps({"journal": record["journal"], "name": name, "entry": entry},
                      sort_keys=True)
    path = Path(output) / JOURNAL_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND
                         | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        # A line after a torn one (a killed run's) starts on its own line.
        size = os.lseek(descriptor, 0, os.SEEK_END)
        torn = size > 0 and os.lseek(descriptor, size - 1, os.SEEK_SET) >= 0 \
            and os.read(descriptor, 1) != b"\n"
        os.write(descriptor, (("\n" if torn else "") + line + "\n").encode())
    finally:
        os.close(descriptor)


def _check_fit(fit):
    """A fit identity of the shape :func:`describe_fit` writes, or ValueError."""
    if not isinstance(fit, dict) or not isinstance(fit.get("skseg"), str):
        raise ValueError("no fit")
    if "model" in fit:
        if not isinstance(fit["model"], str):
            raise ValueError("a fit whose model is not a digest")
        return
    training = fit.get("training")
    if not isinstance(fit.get("parameters"), dict) or not isinstance(training, list) \
            or not all(digest is None or isinstance(digest, str) for digest in training):
        raise ValueError("a fit without its parameters and training images")


@contextlib.contextmanager
def hold_output(output):
    """Hold ``output`` for this run; refuse it while another run holds it.

    Two runs writing masks of two fits into one folder would mix them, and
    the second's record would not account for the first's masks. The lock
    is released by the system when the process ends, killed or not.
    """
    from filelock import FileLock, Timeout

    output = Path(output)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    lock = FileLock(os.fspath(output / _LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{output} is being written by another skseg run "
                        f"({_holder(output)}); wait for it to finish, or choose another "
                        "-o.") from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        text = json.dumps(holder).encode()
        write_atomically(output / _HOLDER_NAME, lambda handle: handle.write(text))
        yield
    finally:
        try:
            (output / _HOLDER_NAME).unlink(missing_ok=True)
            if created and os.listdir(output) == [_LOCK_NAME]:
                # A run stopped before its first output leaves no folder behind.
                (output / _LOCK_NAME).unlink()
                output.rmdir()
        finally:
            lock.release()


def _holder(output):
    """Which run holds ``output``, as far as its holder file tells."""
    try:
        holder = json.loads((Path(output) / _HOLDER_NAME).read_text())
        return (f"process {int(holder['pid'])} on {str(holder['host'])[:64]}, started "
                f"{str(holder['started'])[:19]}")
    except (OSError, ValueError, KeyError, TypeError):  # it is starting, or ending
        return "its process is starting or ending"


def new_record(fit):
    return {"format": _RECORD_FORMAT, "fit": fit, "outputs": {}, "skipped": {},
            "preview": None}


def write_record(output, record):
    """Rewrite the whole record, its journal's lines included; later outputs
    go to a new journal."""
    record["journal"] = os.urandom(8).hex()
    text = json.dumps(record, indent=1, sort_keys=True).encode()
    write_atomically(Path(output) / RECORD_NAME, lambda handle: handle.write(text))
    (Path(output) / JOURNAL_NAME).unlink(missing_ok=True)  # its lines are in the record


# Every type a saved skseg pipeline holds that skops does not trust by itself
# (it trusts scikit-learn's and numpy's): what skseg.io.load_model trusts, and
# what a user passes to skops.io.load.
TRUSTED_TYPES = (
    "skseg._transformer.ViTPatchTransformer",
    "skseg._segmenter.MultilevelSegmenter",
    "skseg._regions.LabelMasks",
    "skseg._regions.Regions",
    "skseg._label_store.LabelStore",
    "skseg._label_store.StoredLabelMasks",
)


def _check_pipeline(pipeline, what):
    """A fitted ViTPatchTransformer + MultilevelSegmenter pipeline, or an error
    saying ``what`` is not one."""
    from sklearn.pipeline import Pipeline

    from ._segmenter import MultilevelSegmenter
    from ._transformer import ViTPatchTransformer

    steps = getattr(pipeline, "steps", None)
    if (not isinstance(pipeline, Pipeline) or len(steps) != 2
            or not isinstance(steps[0][1], ViTPatchTransformer)
            or not isinstance(steps[1][1], MultilevelSegmenter)
            or not hasattr(steps[1][1], "class_centroids_")):
        raise UserError(f"{what} (not a fitted ViTPatchTransformer + MultilevelSegmenter "
                        "pipeline).")


def save_model(pipeline, path, *, keep_labels=False):
    """Save a fitted pipeline in the skops format, which loads without
    running code from the file.

    What ``skseg segment --save-model`` writes; :func:`load_model` (or
    ``skops.io.load(path, trusted=skseg.io.TRUSTED_TYPES)``) reads it. The
    file is written atomically. The ViT itself is never saved, only its
    name and parameters: loading builds it again (from the same weights
    file, stored as an absolute path, or the hub cache).

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        A fitted :class:`~skseg.ViTPatchTransformer` +
        :class:`~skseg.MultilevelSegmenter` pipeline.
    path : path-like
        The file written (``.skops`` by convention).
    keep_labels : bool, default=False
        Also save the training masks (``labels_``, compressed). Predicting
        needs only the centroids, and the masks can outweigh them many times.

    Raises
    ------
    ValueError
        ``pipeline`` is not a fitted skseg pipeline.

    See Also
    --------
    load_model : Read it back.
    """
    import copy

    import skops.io

    _check_pipeline(pipeline, f"cannot save {type(pipeline).__name__} as a skseg model")
    saved = pipeline
    if not keep_labels:
        segmenter = copy.copy(pipeline.steps[-1][1])
        # Predicting needs the centroids, not the training masks.
        vars(segmenter).pop("labels_", None)
        saved = copy.copy(pipeline)
        saved.steps = [*pipeline.steps[:-1], (pipeline.steps[-1][0], segmenter)]
    data = skops.io.dumps(saved)
    write_atomically(path, lambda handle: handle.write(data))


def load_model(path):
    """Read a pipeline saved by :func:`save_model` (or ``skseg segment
    --save-model``).

    Only the types of :data:`TRUSTED_TYPES` and those skops trusts by itself
    (scikit-learn's, numpy's) are built, and no code from the file ever runs:
    any other file is refused.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        The fitted pipeline, ready to ``predict``.

    Raises
    ------
    ValueError
        The file cannot be read, or is not a skseg model (one line, naming
        the file and, for a skops file, the foreign types it holds).
    """
    import skops.io

    not_a_model = f"{path} is not a model saved by skseg"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror}.") from None
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception:  # skops raises zip, JSON and key errors alike for foreign files
        raise UserError(f"{not_a_model}.") from None
    foreign = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if foreign:
        raise UserError(f"{not_a_model}: it holds types a saved skseg model never holds "
                        f"({', '.join(foreign[:3])}); refusing to load it.")
    try:
        pipeline = skops.io.loads(data, trusted=untrusted)
    except Exception as exc:
        raise UserError(f"{not_a_model} ({type(exc).__name__}).") from None
    _check_pipeline(pipeline, not_a_model)
    return pipeline
