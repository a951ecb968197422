"""Zero-shot AP of both pretrained models at several input sizes, on the validation split.

Why the recipes train above the pretrained sizes (docs/training.md, "Input size"). FastestDet is run twice above its
352 size: with its box sizes read as fractions of 352 (``decode.size_basis``, what ``at_input_size`` does)
and, to show why that is needed, as fractions of the actual input.

    python benchmarks/input_size.py --mirror ../shared --out runs/input_size.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
from pathlib import Path

import torch

SIZES = {"yolox-nano": (416, 448, 480, 512), "fastestdet": (352, 384, 416, 448, 480)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/input_size.md"))
    args = parser.parse_args()
    os.environ["EDGESIGHT_MIRROR"] = str(Path(args.mirror).resolve())
    torch.set_num_threads(1)

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from models import create_model
    from models.base import TARGET_CLASSES, at_input_size
    from toolkit.data.coco import to_coco
    from toolkit.data.sets import default_splits
    from toolkit.evaluate import EVAL_SCORE_THRESHOLD, evaluate
    from toolkit.evaluate.torch_detector import TorchDetector

    _, val = default_splits()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    val_json = to_coco(val, args.out.with_suffix(".val.json"), TARGET_CLASSES)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_json))

    def by_area(predictions: Path, category: int) -> list[float]:
        """AP@[.5:.95] of one category for small, medium and large objects (COCO's area ranges)."""
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(str(predictions)), "bbox")
            ev.params.catIds = [category]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return [float(ev.stats[i]) for i in (3, 4, 5)]

    header = (
        "| model | input | box sizes read as | pedestrian AP | pedestrian S / M / L | stop_sign AP | "
        "stop_sign S / M / L | ms/frame (1 thread) |\n|---|---:|---|---:|---|---:|---|---:|"
    )
    rows = []
    for name, sizes in SIZES.items():
        model = create_model(name)
        native = model.spec
        for size in sizes:
            spec = at_input_size(native, size)
            variants = [("fractions of 352" if spec.decode.size_basis else "-", spec)]
            if spec.decode.size_basis:
                naive = dataclasses.replace(spec, decode=dataclasses.replace(spec.decode, size_basis=None))
                variants.append((f"fractions of {size}", naive))
            for basis, variant in variants:
                model.spec = variant
                predictions = args.out.parent / f"input_size-{name}-{size}.json"
                res = evaluate(TorchDetector(model, EVAL_SCORE_THRESHOLD), val_json, None, model.spec.labels,
                               save_predictions=predictions)
                cells = []
                for cls in res.classes:
                    cat = next(c for c in gt.cats.values() if c["name"] == cls.name)
                    areas = " / ".join(f"{v:.3f}" for v in by_area(predictions, cat["id"]))
                    cells += [f"{cls.ap:.3f}", areas]
                rows.append(f"| {name} | {size} | {basis} | {' | '.join(cells)} | {res.median_ms:.1f} |")
                print(rows[-1], flush=True)
    table = f"{header}\n" + "\n".join(rows) + f"\n\n{len(val)} validation images; AP = COCO AP@[.5:.95].\n"
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
