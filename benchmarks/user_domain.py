"""A user's own photos, built from the bundled data: does ``edgesight train --data`` pay off on their unseen photos?

One bundled source plays the user's camera: its photos are split in two halves by photo (a stable hash of each
photo's id). The first half is written as a COCO json and given to the trainer as ``--data`` (the user's labelled
photos: the trainer splits them again into its own train and validation photos); the second half is never seen
and is where the result is measured. The source is left out of the bundled sets, and so is every copy of its
photos in another set (five Kaggle road-sign photos are also in the Roboflow set).

    python benchmarks/user_domain.py --mirror ../shared --source roadsign_kaggle_stop --out runs/user-kaggle
    python benchmarks/user_domain.py --mirror ../shared --source coco128 --out runs/user-coco128
    python benchmarks/user_domain.py --mirror ../shared --source roboflow_stop_signs --camera grey --out DIR

``--camera grey`` plays a monochrome camera (a security camera in night mode, with its IR-cut filter off,
delivers grey frames): both halves are written as single-channel copies of the photos, so the user's camera
differs from the colour photos the COCO model learnt from; the bundled sets beside them stay in colour.

Printed: AP@[.5:.95] on the unseen half, per class the user's half labels, for the zero-shot model at its
pretrained size, at the size the run chose, and best.pt; gains with the noise of a paired bootstrap over the
unseen photos; and what the run itself reported on the user's validation photos.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch


def halves(samples: list) -> tuple[list, list]:
    """The user's half and the unseen half, by a stable hash of each photo's group (copies stay together)."""
    def first_half(s) -> bool:
        return hashlib.sha256(s.group.encode()).digest()[0] < 128

    return [s for s in samples if first_half(s)], [s for s in samples if not first_half(s)]


def grey_copies(samples: list, folder: Path) -> list:
    """``samples`` with each photo replaced by a single-channel PNG copy under ``folder`` (its path below the
    photos' common folder kept, so that Roboflow's copies of one photo still share their group)."""
    import cv2
    import numpy as np

    from toolkit.data.images import load_image

    root = Path(os.path.commonpath([s.image_path.parent for s in samples]))
    copies = []
    for s in samples:
        path = (folder / s.image_path.relative_to(root)).with_suffix(".png")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            grey = cv2.cvtColor(load_image(s.image_path), cv2.COLOR_BGR2GRAY)
            if not cv2.imwrite(str(path), np.ascontiguousarray(grey)):
                raise OSError(f"could not write {path}")
        copies.append(dataclasses.replace(s, image_path=path))
    return copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--source", required=True, help="The bundled set that plays the user's photos.")
    parser.add_argument("--model", default="yolox-nano")
    parser.add_argument("--config", type=Path, help="JSON recipe fields (TrainConfig) on top of the default.")
    parser.add_argument("--camera", choices=("as-is", "grey"), default="as-is",
                        help="grey: both halves as a monochrome camera sees them (see above).")
    parser.add_argument("--out", type=Path, default=Path("runs/user_domain"))
    args = parser.parse_args()
    os.environ["EDGESIGHT_MIRROR"] = str(Path(args.mirror).resolve())
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("toolkit.data", "toolkit.evaluate", "models"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from devices.host import machine
    from models import create_model
    from models.base import TARGET_CLASSES
    from models.checkpoint import load_checkpoint
    from toolkit.data.coco import to_coco
    from toolkit.data.sets import DEFAULT_DATASETS, load_dataset, split
    from toolkit.data.userdata import read_user_dataset
    from toolkit.evaluate.by_source import compare, one_copy_each
    from toolkit.train import recipe, train
    from toolkit.train.loop import TrainData, validate

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    mine, unseen = halves(one_copy_each(load_dataset(args.source)))
    if args.camera == "grey":
        mine, unseen = (grey_copies(half, args.out / "grey") for half in (mine, unseen))
    user_json = to_coco(mine, args.out / f"{args.source}-yours.json", TARGET_CLASSES)
    groups = {s.group for s in mine + unseen}
    bundled = [s for name in DEFAULT_DATASETS if name != args.source for s in load_dataset(name)
               if s.group not in groups]

    # The trainer's own data path for --data (read the json, split it by photo), beside the other bundled sets.
    fields = {"model": args.model, "data": [str(user_json)],
              **(json.loads(args.config.read_text()) if args.config else {})}
    config = recipe(**fields)
    own = read_user_dataset(user_json)
    own_train, own_val = split(own)
    bundled_train, bundled_val = split(bundled)
    data = TrainData(own_train + bundled_train, one_copy_each(own_val + bundled_val), (own[0].source,))
    result = train(config, args.out / "run", progress=False, data=data)

    # Measure on the unseen half: zero-shot at its pretrained size and at the chosen size, and best.pt.
    zero = create_model(args.model, num_classes=2, pretrained=True)
    native = zero.spec.input.width
    ref = validate(zero, unseen, args.out, native)
    rows = {f"zero-shot ({native})": ref}
    if result.size.size != native:
        rows[f"zero-shot at the chosen {result.size.size}"] = validate(zero, unseen, args.out, result.size.size)
    rows[f"best.pt ({result.size.weights}, {result.size.size})"] = validate(load_checkpoint(result.best), unseen,
                                                                             args.out)
    labelled = sorted({TARGET_CLASSES[int(c)] for s in mine for c in s.labels})
    camera = "" if args.camera == "as-is" else f", a {args.camera} camera"
    lines = [f"# User-domain experiment: {args.source} halves{camera}, {args.model}", "",
             (f"CPU: {machine()}; your photos: {len(mine)} ({len(own_train)} train / {len(own_val)} validation); "
             f"unseen: {len(unseen)}; bundled: {len(bundled_train)} train / {len(bundled_val)} validation; "
             f"recipe: {json.dumps(fields)}"), "",
             "| model | " + " | ".join(f"{c} AP on unseen (gain ± SD)" for c in labelled) + " |",
             "|---|" + "---|" * len(labelled)]
    for name, m in rows.items():
        cells = [compare(m, ref, None, c) for c in labelled]
        lines.append(f"| {name} | " + " | ".join(
            "n/a" if c.ap is None else f"{c.ap:.3f} ({c.gain:+.3f} ± {c.noise:.3f}, {c.num_gt} boxes)"
            for c in cells) + " |")
    yours = result.summary["your_photos"]
    lines += ["", "The run's own report on your validation photos: " + "; ".join(
        f"{cls} {r['ap']:.3f} ({r['gain']:+.3f} ± {r['noise']:.3f})" for per in yours.values()
        for cls, r in per.items()), "",
        (f"best epoch {result.best_epoch}, size {result.size.size} ({result.size.weights}), training "
        f"{result.wall_seconds / 60:.1f} min; {time.perf_counter() - started:.0f} s in all.")]
    table = "\n".join(lines) + "\n"
    (args.out / "user_domain.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
