"""Validation table of the fine-tuning issue: zero-shot vs fine-tuned, both tiers, peers and HOG.

Every row is evaluated on the same validation split (toolkit.data.sets.default_splits) in one run, with
pycocotools AP, and timed per frame (pre + model + post) at one thread.

    python benchmarks/finetune_table.py --mirror ../shared --run yolox=runs/exp1/best.pt \
        --run fastestdet=runs/fast/best.pt --out runs/finetune_table.md
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--run", action="append", default=[], help="NAME=path/to/best.pt (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune_table.md"))
    parser.add_argument("--no-hog", action="store_true", help="Skip HOG (slow: ~0.6 s per image)")
    parser.add_argument("--max-val-images", type=int)
    args = parser.parse_args()
    os.environ["EDGESIGHT_MIRROR"] = str(Path(args.mirror).resolve())
    torch.set_num_threads(1)

    from models import create_model
    from models.base import TARGET_CLASSES, at_input_size
    from models.checkpoint import load_checkpoint, read_checkpoint
    from toolkit.data.coco import to_coco
    from toolkit.data.sets import default_splits
    from toolkit.evaluate import EVAL_SCORE_THRESHOLD, evaluate
    from toolkit.evaluate.hog import HogPeopleDetector
    from toolkit.evaluate.peers import load_peers
    from toolkit.evaluate.results import fmt_ap
    from toolkit.evaluate.torch_detector import TorchDetector

    _, val = default_splits()
    val = val[: args.max_val_images] if args.max_val_images else val
    args.out.parent.mkdir(parents=True, exist_ok=True)
    val_json = to_coco(val, args.out.with_suffix(".val.json"), TARGET_CLASSES)

    detectors = {
        "YOLOX-Nano zero-shot (COCO)": TorchDetector(create_model("yolox-nano"), EVAL_SCORE_THRESHOLD),
        "FastestDet zero-shot (COCO)": TorchDetector(create_model("fastestdet"), EVAL_SCORE_THRESHOLD),
    }
    for item in args.run:
        name, path = item.split("=", 1)
        tuned = load_checkpoint(Path(path))
        size = tuned.spec.input.width
        zero = create_model(read_checkpoint(Path(path))["arch"])
        if size != zero.spec.input.width:
            # Separates what the larger input buys from what training adds.
            zero.spec = at_input_size(zero.spec, size)
            detectors[f"{name} zero-shot at {size}"] = TorchDetector(zero, EVAL_SCORE_THRESHOLD)
        detectors[f"{name} fine-tuned at {size}"] = TorchDetector(tuned, EVAL_SCORE_THRESHOLD)
    for peer in load_peers(Path(args.mirror) / "weights" / "peers", threads=1):
        if peer.name != "yolox-nano":  # the same network as the zero-shot row above
            detectors[f"{peer.name} (peer, COCO)"] = peer
    if not args.no_hog:
        detectors["OpenCV HOG+SVM"] = HogPeopleDetector()

    rows, results = [], {}
    header = ("| model | pedestrian AP | pedestrian AP50 | stop_sign AP | stop_sign AP50 | mean AP "
              "| ms/frame (1 thread, median) |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, det in detectors.items():
        res = evaluate(det, val_json, None, det.labels)
        results[name] = res.to_dict()
        per = {c.name: c for c in res.classes}
        cells = [fmt_ap(getattr(per[c], k)) if c in per else "n/a" for c in TARGET_CLASSES for k in ("ap", "ap50")]
        rows.append(f"| {name} | {' | '.join(cells)} | {fmt_ap(res.map)} | {res.median_ms:.1f} |")
        print(rows[-1], flush=True)
    table = f"{header}\n" + "\n".join(rows) + f"\n\n{len(val)} validation images; AP = COCO AP@[.5:.95].\n"
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(table)


if __name__ == "__main__":
    main()
