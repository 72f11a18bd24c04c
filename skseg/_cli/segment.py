"""``skseg segment``: every check first, then the fit, then the outputs.

The order is the point: option and path mistakes are reported before any
model is built, model mistakes before any feature is computed, and the masks
are written before anything that could still fail (saving the model, the
preview), so a late error never loses them.
"""

import contextlib
import os
import sys
from pathlib import Path

from .._cache import config_digest
from .._image_checks import check_each_image
from .._images import content_hash
from .._io import inside, remove_stale_temporaries
from .._model_files import load_model, save_model
from .._run_record import (
    describe_fit,
    fit_differences,
    hold_output,
    new_record,
    read_record,
    result_parameters,
    write_record,
)
from .._weights import WeightsUnavailableError
from .inputs import find_inputs
from .messages import UserError, dask_logs_as_warnings, one_line, print_error, say
from .segment_outputs import (
    complete_overlays,
    describe_redrawn,
    read_legend,
    remove_outputs,
    update_class_names,
    write_masks,
    write_preview,
)


def run(args):
    """Run ``skseg segment``, on a Dask cluster when ``--scheduler`` or
    ``--workers`` asks for one; return the exit status."""
    with contextlib.ExitStack() as stack:
        if args.scheduler is not None or args.workers is not None:
            from .._dask import dask_backend

            stack.enter_context(dask_logs_as_warnings(args.quiet))
            try:
                stack.enter_context(dask_backend(args.scheduler, args.workers,
                                                 connect_timeout=args.connect_timeout))
            except ImportError as exc:
                raise UserError(one_line(exc)) from None
        return run_segment(args)


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


def _use_feature_store(args, vit):
    """Features go into a FeatureStore under OUTDIR (or ``--cache``), one per
    extraction: reruns skip the images it holds, and the segmenter reads it
    chunk by chunk, so memory does not grow with the number of images."""
    vit.set_params(memory=None, store=None)
    if args.no_cache:
        return
    name = f"{vit.model}-{config_digest(vit.extraction_parameters())[:10]}.zarr"
    folder = args.cache or args.output / ".skseg-features"
    if isinstance(folder, str):  # a URL: credentials from the environment
        vit.set_params(store=f"{folder.rstrip('/')}/{name}")
    else:
        vit.set_params(store=os.fspath(folder / name))


def _build_pipeline(args):
    from sklearn.pipeline import Pipeline

    from .. import MultilevelSegmenter, ViTPatchTransformer

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
    except ValueError as exc:
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
    height, width = vit.input_size(shape)
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


def _remind_random_weights(args, vit):
    if not vit.pretrained and vit.weights is None:
        say(args, f"The ViT ({vit.model}) has RANDOM weights: the masks only show that "
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
    for folder in {output} | {inside(output, image.mask_name).parent for image in images}:
        remove_stale_temporaries(folder)
    try:
        record = read_record(output)
    except ValueError:
        if not args.force:
            raise
        record = None
    if args.save_model:
        _check_side_file("--save-model", args.save_model, images, args.force, None)
    if args.preview:
        _check_side_file("--preview", args.preview, images, args.force,
                         record and record.get("preview"))
    for image in images:
        inside(output, image.mask_name)
    legend = read_legend(args)
    pipeline = _load_pipeline(args) if args.load_model else _build_pipeline(args)
    digests = [_digest(image.path) for image in images]
    fit = describe_fit(model=content_hash(args.load_model)) if args.load_model else \
        describe_fit(parameters=result_parameters(pipeline), training=digests)
    kept, skipped_before, stale = _plan(record, fit, images, digests, args)
    update_class_names(output, legend, record is not None and record["fit"] != fit)

    same_fit = record is not None and record["fit"] == fit
    new = new_record(fit)
    if same_fit:
        new["outputs"], new["skipped"] = record["outputs"], record["skipped"]
        new["preview"] = record.get("preview")
    kept_images = [images[index] for index in sorted(kept)]
    if len(kept) + len(skipped_before) == len(images) and not args.save_model:
        redrawn = complete_overlays(args, kept_images, new, legend) if args.overlay else 0
        if args.preview:
            write_preview(args, kept_images, new, legend)
        write_record(output, new)
        done = [describe_redrawn(redrawn)] if redrawn else []
        if args.preview:
            done.append("rewrote the preview")
        say(args, f"All {len(kept)} masks in {output} were made by this same fit; "
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
    remove_outputs(output, stale, new["outputs"])
    write_record(output, new)  # before any mask, so that every mask is accounted for
    kept_set = set(kept_images)
    todo = [image for image in good if image not in kept_set]
    _remind_random_weights(args, vit)
    if args.load_model:
        say(args, f"Loaded {args.load_model}; predicting {len(todo)} images.")
        labels = pipeline.predict([image.path for image in todo]) if todo else []
    else:
        say(args, f"Fitting on {len(good)} images with {args.model}.")
        pipeline.fit([image.path for image in good])
        for line in _chosen_counts(pipeline.named_steps["seg"]):
            say(args, line)
        position = {image: k for k, image in enumerate(good)}
        # A lazy LabelMasks: each mask is made when written, one at a time.
        labels = pipeline.named_steps["seg"].labels_[[position[image] for image in todo]]
    previous_outputs = record["outputs"] if record else {}
    write_masks(args, todo, labels, new, previous_outputs, digest_of, legend)
    redrawn = complete_overlays(args, kept_images, new, legend) if args.overlay else 0
    write_record(output, new)
    say(args, f"Wrote {len(todo)} masks to {output}"
              + (f"; kept {len(kept)} made by this same fit" if kept else "")
              + (f" and {describe_redrawn(redrawn)}" if redrawn else "") + ".")
    status = 0
    if args.save_model:
        try:
            vit.set_params(store=None)  # this run's store is no part of the model
            save_model(pipeline, args.save_model)
            say(args, f"Saved the fitted pipeline to {args.save_model}.")
        except OSError as exc:
            print_error(f"the masks are written, but --save-model {args.save_model} "
                        f"failed: {exc}")
            status = 2
    if args.preview:
        write_preview(args, [image for image in images
                             if image.mask_name.as_posix() in new["outputs"]], new, legend)
        write_record(output, new)
    if skipped:
        print(f"skseg: {len(skipped)} input(s) could not be read and were skipped.",
              file=sys.stderr)
        status = status or 1
    return status


