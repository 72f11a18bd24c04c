"""``skseg segment``: every check first, then the fit, then the outputs.

The order is the point: option and path mistakes are reported before any
model is built, model mistakes before any feature is computed, and the masks
are written before anything that could still fail (saving the model, the
preview), so a late error never loses them.
"""

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ._weights import WeightsUnavailableError
from ._cache import config_digest
from ._images import check_each_image, content_hash, load_rgb
from ._inputs import UserError, find_inputs, one_line, overlay_name
from ._io import (
    CLASS_NAMES_FILE,
    contact_sheet,
    inside,
    matched_palette,
    overlay,
    read_class_names,
    read_label_png,
    remove_stale_temporaries,
    save_class_names,
    save_image,
    save_label_png,
)
from ._run_record import (
    describe_fit,
    fit_differences,
    hold_output,
    load_model,
    new_record,
    read_record,
    record_output,
    result_parameters,
    save_model,
    write_record,
)

_PREVIEW_IMAGES = 48
_PREVIEW_PAIRS_PER_ROW = 4
# Threads writing masks and overlays (PNG and JPEG encoding release the GIL).
_WRITE_THREADS = min(4, os.cpu_count() or 1)


def _say(args, message):
    if not args.quiet:
        print(message, file=sys.stderr)


def _check_writable_folder(description, folder):
    """A folder that exists or can be created, and can be written to."""
    folder = Path(os.path.abspath(folder))
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{description} is a file, not a folder.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{description} cannot be created: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{description} cannot be written: {existing} is not writable.")


def _check_side_file(option, path, images, force, written_before):
    """A file written beside the masks (model, preview): never an input, never
    an existing file unless ``--force`` (or this folder's own earlier one)."""
    real = os.path.realpath(path)
    if any(os.path.realpath(image.path) == real for image in images):
        raise UserError(f"{option} {path} is one of the input images; choose another file.")
    if Path(path).is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name.")
    if Path(path).exists() and not force and real != written_before:
        raise UserError(f"{option} {path} already exists; use --force to overwrite it.")
    _check_writable_folder(f"{option} {path}: its folder", Path(path).parent)


def _inside(output, relative):
    """``output / relative``, refused if a link below OUTDIR leads it elsewhere."""
    try:
        return inside(output, relative)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _use_feature_store(args, vit):
    """Features go into a FeatureStore under OUTDIR (or ``--cache``), one per
    extraction: reruns skip the images it holds, and the segmenter reads it
    chunk by chunk, so memory does not grow with the number of images."""
    vit.set_params(memory=None, store=None)
    if args.no_cache:
        return
    name = f"{vit.model}-{config_digest(vit._cache_config())[:10]}.zarr"
    folder = args.cache or args.output / ".skseg-features"
    if isinstance(folder, str):  # a URL: credentials from the environment
        vit.set_params(store=f"{folder.rstrip('/')}/{name}")
    else:
        vit.set_params(store=os.fspath(folder / name))


def _build_pipeline(args):
    from sklearn.pipeline import Pipeline

    from . import MultilevelSegmenter, ViTPatchTransformer

    vit_parameters = dict(
        pretrained=not args.random_weights,
        # Absolute, so a saved model finds its weights from any folder.
        weights=None if args.weights is None else os.fspath(args.weights.resolve()),
        facet=args.facet, layer=args.layer, image_size=args.image_size,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        n_jobs=args.n_jobs,
    )
    vit = ViTPatchTransformer(args.model, attention=args.foreground == "attention",
                              verbose=not args.quiet, **vit_parameters)
    segmenter = MultilevelSegmenter(
        n_classes=args.n_classes, max_classes=args.max_classes,
        n_categories=args.n_categories,
        n_dataset_clusters=args.n_dataset_clusters, foreground=args.foreground,
        consensus=args.consensus, refine=None if args.refine == "none" else args.refine,
        refine_iter=args.refine_iter, refine_dilations=args.refine_dilations,
        refine_max_side=args.refine_max_side, crf_radius=args.crf_radius,
        crf_stride=args.crf_stride, crf_bilateral_weight=args.crf_bilateral_weight,
        crf_bilateral_xy=args.crf_bilateral_xy, crf_bilateral_rgb=args.crf_bilateral_rgb,
        crf_gaussian_weight=args.crf_gaussian_weight, crf_gaussian_xy=args.crf_gaussian_xy,
        region=args.region,
        region_encoder=ViTPatchTransformer(args.model, **vit_parameters)
        if args.region == "crop" else None,
        min_region_size=args.min_region_size, max_samples=args.max_samples,
        max_iter=args.max_iter, n_init=args.n_init, metric=args.metric,
        device=args.device, random_state=args.random_state, n_jobs=args.n_jobs,
        verbose=not args.quiet,
    )
    return Pipeline([("vit", vit), ("seg", segmenter)])


def _load_pipeline(args):
    if args.given_fitting_options:
        raise UserError(f"{', '.join(args.given_fitting_options)} cannot be used with "
                        f"--load-model: {args.load_model} was fitted with its own values, "
                        "which a loaded model keeps.")
    try:
        pipeline = load_model(args.load_model)
    except UserError as exc:
        raise UserError(f"--load-model {exc}") from None
    vit, segmenter = (step for _, step in pipeline.steps)
    for name in ("store_options", "n_jobs"):  # saved before it had these parameters
        vars(vit).setdefault(name, None)
    vit.set_params(verbose=not args.quiet, batch_size=args.batch_size, device=args.device,
                   n_jobs=args.n_jobs)
    vars(segmenter).setdefault("verbose", False)  # saved before it had the parameter
    segmenter.set_params(device=args.device, n_jobs=args.n_jobs, verbose=not args.quiet)
    return pipeline


def _prepare_backbone(vit):
    """Build the ViT now, turning the ways that fails into one line each."""
    try:
        vit.fit()
    except WeightsUnavailableError:
        raise UserError(f"pretrained weights for --model {vit.model} could not be loaded "
                        "(no network, and not in the hub cache): pass --weights FILE (a "
                        ".safetensors or .pth of that model), or --random-weights to try "
                        "skseg with an untrained ViT.") from None
    # A model that is no ViT, or weights that do not fit it, raise one-line
    # ValueErrors naming both, printed as they are.
    if vit.image_size is not None:
        grid = _too_small_grid(vit, None)
        if grid:
            raise UserError(f"--image-size {vit.image_size} gives {grid} with "
                            f"{vit.patch_size_}-pixel patches: at least 2 patches are "
                            f"needed (e.g. --image-size {2 * vit.patch_size_}).")


def _too_small_grid(vit, shape):
    """``"a h x w patch grid"`` if an image of ``shape`` gives fewer than 2 patches."""
    height, width = vit._target_size(shape)
    h, w = height // vit.patch_size_, width // vit.patch_size_
    return f"a {h} x {w} patch grid" if h * w < 2 else None


def _check_images(images, vit, args):
    """Readable images, and the reason each other one is skipped."""
    results = check_each_image([image.path for image in images], min_side=vit.patch_size_)
    good, skipped = [], {}
    for image, result in zip(images, results):
        if not isinstance(result, Exception) and vit.image_size is None:
            grid = _too_small_grid(vit, result)
            if grid:
                result = ValueError(f"{image.path} gives {grid}: at least 2 patches are "
                                    "needed")
        if not isinstance(result, Exception):
            good.append(image)
            continue
        if args.strict:
            raise UserError(str(result))
        skipped[image] = one_line(result)
        print(f"skseg: skipped {image.path}: {skipped[image]}", file=sys.stderr)
    if not good:
        raise UserError("none of the inputs could be read.")
    return good, skipped


@dataclass(frozen=True)
class _Legend:
    """How overlays and the preview name and colour the labels."""

    names: dict | None = None  # label id to class name
    palette: object = None  # for skseg._io.resolve_palette
    key: dict | None = None  # what the record notes of an overlay drawn with it


def _legend(args):
    """Label names from ``--legend-names``: an ``evaluate --json`` output
    (each label named by its matched class, and drawn in that class's VOC
    colour when evaluate named VOC's classes), or a ``classes.json``."""
    path = args.legend_names
    if path is None:
        return _Legend()
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"--legend-names {path} cannot be read as JSON "
                        f"({one_line(exc)}).") from None
    if isinstance(report, dict) and "assignment" in report:
        try:
            assignment = {int(label): int(cls) for label, cls in report["assignment"].items()}
            names = {int(cls): str(name)
                     for cls, name in report.get("class_names", {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"--legend-names {path} is not the output of 'skseg evaluate "
                            f"--json' ({one_line(exc)}).") from None
        matched = {label: cls for label, cls in assignment.items() if cls >= 0}
        legend = {label: names.get(cls, f"class {cls}") for label, cls in matched.items()}
        voc = report.get("classes") == "voc"
        palette = matched_palette(matched, "voc") if voc else None
    else:
        try:
            legend = read_class_names(path)
        except ValueError as exc:
            raise UserError(f"--legend-names {path} is neither the output of 'skseg "
                            f"evaluate --json' nor a classes.json ({one_line(exc)}).") from None
        voc, palette = False, None
    key = {"names": {str(k): v for k, v in legend.items()},
           "palette": "voc" if voc else "clusters"}
    return _Legend(legend, palette, key)


def _update_class_names(output, legend, other_fit):
    """``OUTDIR/classes.json`` names the labels of the masks there: written
    from ``--legend-names``, removed when it named another fit's labels."""
    path = _inside(output, CLASS_NAMES_FILE)
    if legend.names is not None:
        save_class_names(legend.names, path)
    elif other_fit:
        path.unlink(missing_ok=True)


def _plan(record, fit, images, digests, args):
    """Which masks stay (made by this same fit from the same image), which
    inputs were skipped before, and which outputs of another fit to remove."""
    output = args.output
    if record is None:
        existing = [image for image in images if (output / image.mask_name).exists()]
        if existing and not args.force:
            raise UserError(
                f"{output} already holds {len(existing)} of this run's outputs (e.g. "
                f"{output / existing[0].mask_name}) and no record of the run that made "
                "them; use --force to overwrite them, or choose another -o.")
        return set(), set(), []
    if record["fit"] != fit:
        if not args.force:
            raise UserError(f"{output} holds masks of a different fit: "
                            f"{fit_differences(record['fit'], fit)}. Use --force to "
                            "rewrite all its masks, or choose another -o.")
        return set(), set(), list(record["outputs"])
    if args.force:
        return set(), set(), []
    kept, skipped_before = set(), set()
    for index, (image, digest) in enumerate(zip(images, digests)):
        name = image.mask_name.as_posix()
        if record["outputs"].get(name, {}).get("sha1") == digest and \
                (output / image.mask_name).is_file():
            kept.add(index)
        elif record["skipped"].get(name, {}).get("sha1") == digest:
            skipped_before.add(index)
    return kept, skipped_before, []


def _complete_overlays(args, images, record, legend):
    """Draw the overlays the kept masks lack (or that had another legend);
    return how many were drawn."""
    drawn = 0
    for image in images:
        entry = record["outputs"][image.mask_name.as_posix()]
        picture = _inside(args.output, image.overlay_name)
        if entry.get("overlay") == legend.key and picture.is_file():
            continue
        _write_overlay(image, read_label_png(_inside(args.output, image.mask_name)), legend,
                       picture)
        entry["overlay"] = legend.key
        drawn += 1
    return drawn


def _redrawn(count):
    """What redrawing ``count`` overlays of kept masks was, for a message."""
    return f"redrew {count} overlay{'' if count == 1 else 's'}" if count else ""


def _write_overlay(image, mask, legend, picture):
    save_image(overlay(load_rgb(image.path), mask, class_names=legend.names,
                       palette=legend.palette), picture, quality=90)


def _remove_outputs(output, names, keep):
    """Delete the masks (and overlays) of another fit, but those named in ``keep``."""
    for name in names:
        if name in keep:
            continue
        relative = PurePosixPath(name)
        for file in (relative, overlay_name(relative)):
            try:
                _inside(output, file).unlink(missing_ok=True)
            except UserError:  # a planted record must not delete outside OUTDIR
                continue


def _write_preview(args, images, record, legend):
    shown = images[:_PREVIEW_IMAGES]
    contact_sheet([image.path for image in shown],
                  [read_label_png(args.output / image.mask_name) for image in shown],
                  args.preview, names=[image.name.as_posix() for image in shown],
                  class_names=legend.names, palette=legend.palette,
                  columns=_PREVIEW_PAIRS_PER_ROW)
    record["preview"] = os.path.realpath(args.preview)
    _say(args, f"Preview of {len(shown)} of {len(images)} images: {args.preview}")


def _remind_random_weights(args, vit):
    if not vit.pretrained and vit.weights is None:
        _say(args, f"The ViT ({vit.model}) has RANDOM weights: the masks only show that "
                   "the tool runs. For real masks pass --weights FILE, or leave out "
                   "--random-weights where the hub (or its cache) is reachable.")


def _chosen_counts(segmenter):
    """What ``auto`` chose, and the criterion's best values, one line each."""
    lines = []
    for option, what, chosen, scores in (
            ("--n-categories", "image categories", getattr(segmenter, "n_categories_", None),
             getattr(segmenter, "n_categories_scores_", None)),
            ("--n-classes", "classes", getattr(segmenter, "n_classes_", None),
             getattr(segmenter, "n_classes_scores_", None))):
        if not scores:
            continue
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:4]
        values = ", ".join(f"{count}: {score:.3f}" for count, score in best)
        lines.append(f"{option} auto chose {chosen} {what} (silhouette, higher is better; "
                     f"best {values}).")
    return lines


def _digest(path):
    try:
        return content_hash(path)
    except OSError:  # unreadable: the image check reports and skips it
        return None


def run_segment(args):
    """Run ``skseg segment``; return the exit status."""
    output = args.output
    _check_writable_folder(f"-o {output}", output)
    images = find_inputs(args.input, output, recursive=args.recursive, exclude=args.exclude,
                         list_file=args.list_file)
    with hold_output(output):
        return _run_segment(args, images)


def _run_segment(args, images):
    output = args.output
    # This run holds OUTDIR: what an earlier, killed run was writing is debris.
    for folder in {output} | {_inside(output, image.mask_name).parent for image in images}:
        remove_stale_temporaries(folder)
    try:
        record = read_record(output)
    except UserError:
        if not args.force:
            raise
        record = None
    if args.save_model:
        _check_side_file("--save-model", args.save_model, images, args.force, None)
    if args.preview:
        _check_side_file("--preview", args.preview, images, args.force,
                         record and record.get("preview"))
    for image in images:
        _inside(output, image.mask_name)
    legend = _legend(args)
    pipeline = _load_pipeline(args) if args.load_model else _build_pipeline(args)
    digests = [_digest(image.path) for image in images]
    fit = describe_fit(model=content_hash(args.load_model)) if args.load_model else \
        describe_fit(parameters=result_parameters(pipeline), training=digests)
    kept, skipped_before, stale = _plan(record, fit, images, digests, args)
    _update_class_names(output, legend, record is not None and record["fit"] != fit)

    same_fit = record is not None and record["fit"] == fit
    new = new_record(fit)
    if same_fit:
        new["outputs"], new["skipped"] = record["outputs"], record["skipped"]
        new["preview"] = record.get("preview")
    kept_images = [images[index] for index in sorted(kept)]
    if len(kept) + len(skipped_before) == len(images) and not args.save_model:
        redrawn = _complete_overlays(args, kept_images, new, legend) if args.overlay else 0
        if args.preview:
            _write_preview(args, kept_images, new, legend)
        write_record(output, new)
        done = [_redrawn(redrawn)] if redrawn else []
        if args.preview:
            done.append("rewrote the preview")
        _say(args, f"All {len(kept)} masks in {output} were made by this same fit; "
                   f"{' and '.join(done) or 'nothing to do'} (--force rewrites them).")
        if skipped_before:
            print(f"skseg: {len(skipped_before)} input(s) could not be read in that run and "
                  "were skipped.", file=sys.stderr)
            return 1
        return 0

    vit = pipeline.steps[0][1]
    _prepare_backbone(vit)
    _use_feature_store(args, vit)
    good, skipped = _check_images(images, vit, args)
    digest_of = dict(zip(images, digests))
    for image, reason in skipped.items():
        new["skipped"][image.mask_name.as_posix()] = {
            "input": os.path.abspath(image.path), "sha1": digest_of[image], "reason": reason}
    # The other fit's outputs go before the record stops listing them: an
    # interrupted run leaves them listed (and removed again by the next
    # --force), never on disk and forgotten.
    _remove_outputs(output, stale, new["outputs"])
    write_record(output, new)  # before any mask, so that every mask is accounted for
    kept_set = set(kept_images)
    todo = [image for image in good if image not in kept_set]
    _remind_random_weights(args, vit)
    if args.load_model:
        _say(args, f"Loaded {args.load_model}; predicting {len(todo)} images.")
        labels = pipeline.predict([image.path for image in todo]) if todo else []
    else:
        _say(args, f"Fitting on {len(good)} images with {args.model}.")
        pipeline.fit([image.path for image in good])
        for line in _chosen_counts(pipeline.named_steps["seg"]):
            _say(args, line)
        position = {image: k for k, image in enumerate(good)}
        # A lazy LabelMasks: each mask is made when written, one at a time.
        labels = pipeline.named_steps["seg"].labels_[[position[image] for image in todo]]
    previous_outputs = record["outputs"] if record else {}
    _write_masks(args, todo, labels, new, previous_outputs, digest_of, legend)
    redrawn = _complete_overlays(args, kept_images, new, legend) if args.overlay else 0
    write_record(output, new)
    _say(args, f"Wrote {len(todo)} masks to {output}"
               + (f"; kept {len(kept)} made by this same fit" if kept else "")
               + (f" and {_redrawn(redrawn)}" if redrawn else "") + ".")
    status = 0
    if args.save_model:
        try:
            vit.set_params(store=None)  # this run's store is no part of the model
            save_model(pipeline, args.save_model)
            _say(args, f"Saved the fitted pipeline to {args.save_model}.")
        except OSError as exc:
            print(f"skseg: error: the masks are written, but --save-model "
                  f"{args.save_model} failed: {one_line(exc)}", file=sys.stderr)
            status = 2
    if args.preview:
        _write_preview(args, [image for image in images
                              if image.mask_name.as_posix() in new["outputs"]], new, legend)
        write_record(output, new)
    if skipped:
        print(f"skseg: {len(skipped)} input(s) could not be read and were skipped.",
              file=sys.stderr)
        status = status or 1
    return status


def _write_masks(args, todo, labels, record, previous_outputs, digest_of, legend):
    """Write the masks (and overlays) of ``todo`` in threads, recording each
    in ``record`` once its files are written.

    Each image's overlay is written before its mask, so a mask on disk always
    has its overlay beside it. Interrupted or failed, the writes not started
    are dropped, those started are finished, and the record accounts for
    every mask written; files appear whole or not at all (atomic writes).
    """
    from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm.auto import tqdm

    def write(image, mask):
        name = image.mask_name.as_posix()
        picture = _inside(args.output, image.overlay_name)
        if args.overlay:
            _write_overlay(image, mask, legend, picture)
        elif previous_outputs.get(name, {}).get("overlay", False) is not False:
            picture.unlink(missing_ok=True)  # it showed the mask being replaced
        save_label_png(mask, _inside(args.output, image.mask_name))
        return image

    in_flight = set()  # submitted writes not yet recorded

    def record_finished(return_when):
        """Wait for writes of ``in_flight`` to finish (the first, or all) and
        record those that did; raise the first error. A write leaves
        ``in_flight`` only once recorded, so that a stop at any moment leaves
        every finished write to the ``finally`` below."""
        done, _ = wait(in_flight, return_when=return_when)
        error = None
        for future in done:
            if not future.cancelled():
                if future.exception() is not None:
                    error = error or future.exception()
                else:
                    image = future.result()
                    record_output(args.output, record, image.mask_name.as_posix(),
                                  {"input": os.path.abspath(image.path),
                                   "sha1": digest_of[image],
                                   "overlay": legend.key if args.overlay else False})
                    progress.update()
            in_flight.discard(future)
        if error is not None:
            raise error

    try:
        with ThreadPoolExecutor(max_workers=_WRITE_THREADS) as pool, tqdm(
                total=len(todo), desc="writing", unit="img", disable=args.quiet) as progress:
            try:
                # Masks are painted here, one at a time, as the writers need them.
                for image, mask in zip(todo, labels):
                    if len(in_flight) >= 2 * _WRITE_THREADS:
                        record_finished(FIRST_COMPLETED)
                    in_flight.add(pool.submit(write, image, mask))
                record_finished(ALL_COMPLETED)
            finally:  # stopped: drop the writes not started, finish and record the others
                for future in in_flight:
                    future.cancel()
                # The first error is the one raised; a second Ctrl-C still stops.
                with contextlib.suppress(Exception):
                    record_finished(ALL_COMPLETED)
    finally:  # interrupted or not, the record accounts for every mask written
        write_record(args.output, record)
