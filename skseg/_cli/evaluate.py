"""``skseg evaluate``: predicted label PNGs scored against ground truth."""

import json
import sys
from pathlib import Path

from .._io import read_class_names, read_label_png
from ..datasets import VOC_CLASSES
from ..metrics import segmentation_report
from .messages import UserError


def run(args):
    """Run ``skseg evaluate``; return the exit status."""
    truth_dir, pred_dir = Path(args.gt_dir), Path(args.pred_dir)
    for folder in (truth_dir, pred_dir):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder.")
    truths = _png_masks(truth_dir)
    if not truths:
        raise UserError(f"no PNG masks in {truth_dir}.")
    class_names = _read_class_names(args.class_names) if args.class_names else None
    # Masks written below OUTDIR/JPEGImages/ pair with GT/x.png by file name,
    # when no prediction has the ground truth's relative path.
    by_path = {pred_dir / truth.relative_to(truth_dir) for truth in truths}
    by_stem = {}
    for pred in _png_masks(pred_dir):
        if pred not in by_path:
            by_stem.setdefault(pred.stem, []).append(pred)
    truths_by_stem = {}
    for truth in truths:
        truths_by_stem.setdefault(truth.stem, []).append(truth)
    y_true, y_pred, missing, by_name = [], [], [], 0
    for truth in truths:
        pred = pred_dir / truth.relative_to(truth_dir)
        if not pred.is_file() and by_stem.get(truth.stem):
            sharing = by_stem[truth.stem] + [other for other in truths_by_stem[truth.stem]
                                             if other != truth]
            if len(sharing) > 1:
                raise UserError(f"ground truth {truth} has no prediction at {pred}, and "
                                f"its file name is not enough to pair it: "
                                f"{', '.join(map(str, sharing[:3]))} have it too; give "
                                "folders whose masks pair by relative path.")
            pred = by_stem[truth.stem][0]
            by_name += 1
        if not pred.is_file():
            if not args.allow_missing:
                raise UserError(f"no prediction {pred} for ground truth {truth} "
                                "(--allow-missing scores the predictions there are).")
            missing.append(pred)
            continue
        true_mask, pred_mask = read_label_png(truth), read_label_png(pred)
        if true_mask.shape != pred_mask.shape:
            raise UserError(f"{pred} is {pred_mask.shape[0]} x {pred_mask.shape[1]} pixels "
                            f"but its ground truth {truth} is {true_mask.shape[0]} x "
                            f"{true_mask.shape[1]}.")
        y_true.append(true_mask)
        y_pred.append(pred_mask)
    if not y_true:
        raise UserError(f"none of the {len(truths)} ground-truth masks has a prediction "
                        f"in {pred_dir}.")
    if all((mask == args.ignore_index).all() for mask in y_true):
        raise UserError(f"every pixel of the ground truth in {truth_dir} is "
                        f"--ignore-index {args.ignore_index}: there is nothing to score.")
    print(f"skseg: paired {len(y_true)} of {len(truths)} ground-truth masks with a "
          f"prediction" + (f" ({by_name} by file name, the others by relative path)"
                           if by_name else " by relative path") + ".", file=sys.stderr)
    if missing:
        print(f"skseg: {len(missing)} of {len(truths)} predictions are missing (e.g. "
              f"{missing[0]}); scored the {len(y_true)} there are.", file=sys.stderr)
    report = segmentation_report(y_true, y_pred, ignore_index=args.ignore_index,
                                 matching=args.matching)
    if args.json:
        result = {
            "n_images": len(y_true), "n_missing": len(missing), "matching": args.matching,
            "mean_iou": report["mean_iou"], "pixel_accuracy": report["pixel_accuracy"],
            "iou": {str(k): v for k, v in report["iou"].items()},
            "assignment": {str(k): v for k, v in report["matching"].items()},
        }
        if class_names:
            result["class_names"] = {str(k): v for k, v in class_names.items()}
        if args.class_names == "voc":
            # The classes are VOC's: overlays may draw them in VOC's colours.
            result["classes"] = "voc"
        print(json.dumps(result, indent=2))
        return 0
    print(f"images          {len(y_true)}" + (f" ({len(missing)} missing)" if missing else ""))
    print(f"matching        {args.matching}")
    print(f"mean IoU        {100 * report['mean_iou']:.2f}")
    print(f"pixel accuracy  {100 * report['pixel_accuracy']:.2f}")
    print("class  IoU")
    for label, value in report["iou"].items():
        name = f"  {class_names[label]}" if class_names and label in class_names else ""
        print(f"{label:5d}  {100 * value:6.2f}{name}")
    return 0


def _png_masks(folder):
    return sorted(path for path in folder.rglob("*.png") if not path.name.startswith("."))


def _read_class_names(source):
    if source == "voc":
        return dict(enumerate(VOC_CLASSES))
    if Path(source).suffix.lower() == ".json":
        try:
            return read_class_names(source)
        except ValueError as exc:
            raise UserError(f"--class-names {exc}") from None
    try:
        lines = Path(source).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--class-names {source} cannot be read: {exc}") from None
    return {index: line.strip() for index, line in enumerate(lines) if line.strip()}
