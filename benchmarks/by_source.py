"""Leave-one-source-out table: does fine-tuning pay off on photos from a source it has not seen?

Each source (the bundled coco128, roadsign_kaggle_stop, roboflow_stop_signs, and each ``--data`` set) is held out
in turn: the recipe trains on the other sources (their own train/validation split decides best.pt and the input
size, as ``edgesight train`` does), and the result is measured on every photo of the held-out source (one copy
per photo). The zero-shot model is measured on the same photos at every candidate size. Each figure is AP@[.5:.95]
with its gain against the zero-shot model at its pretrained size and the noise of that gain: the standard
deviation over a paired bootstrap of the held-out source's photos (``toolkit.by_source``).

    python benchmarks/by_source.py --mirror ../shared --out runs/by_source           # zero-shot + default recipe
    python benchmarks/by_source.py --mirror ../shared --no-train --out runs/by_source # zero-shot only
    python benchmarks/by_source.py --mirror ../shared --config variant.json --out runs/by_source-variant

A cell needs ``MIN_BOXES`` boxes of its class in the held-out source to be measured (coco128 has 5 stop signs,
the two sign sets label no people).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--model", default="yolox-nano")
    parser.add_argument("--sizes", help="Comma-separated candidate sizes (default: the trainer's candidates).")
    parser.add_argument("--config", type=Path, help="JSON recipe fields (TrainConfig) for the fine-tuned rows.")
    parser.add_argument("--data", action="append", default=[], help="A user set (held out in turn too).")
    parser.add_argument("--sources", help="Comma-separated sources to hold out (default: all).")
    parser.add_argument("--no-train", action="store_true", help="Zero-shot rows only.")
    parser.add_argument("--max-images", type=int, help="Photos per held-out source and per training fold (trials).")
    parser.add_argument("--min-boxes", type=int, help="Boxes a held-out cell needs to be measured (default: the "
                        "trainer's MIN_BOXES; 1 for trials on a few photos).")
    parser.add_argument("--out", type=Path, default=Path("runs/by_source"))
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
    from toolkit.data.sets import DEFAULT_DATASETS, load_dataset, split
    from toolkit.data.userdata import read_user_dataset
    from toolkit.evaluate.by_source import close_ups, compare, one_copy_each
    from toolkit.train import recipe, train
    from toolkit.train.loop import TrainData, validate
    from toolkit.train.select import MIN_BOXES

    started = time.perf_counter()
    min_boxes = args.min_boxes or MIN_BOXES
    fields = json.loads(args.config.read_text()) if args.config else {}
    config = recipe(model=args.model, **fields)
    native = create_model(args.model, num_classes=2, pretrained=False).spec.input.width
    sizes = sorted({native, *(int(s) for s in args.sizes.split(","))} if args.sizes else {native, *config.sizes})
    by_source = {name: load_dataset(name) for name in DEFAULT_DATASETS}
    user_sources = []
    for path in args.data:
        samples = read_user_dataset(path)
        by_source[samples[0].source] = samples
        user_sources.append(samples[0].source)
    held = {name: one_copy_each(s)[: args.max_images] for name, s in by_source.items()}
    folds = args.sources.split(",") if args.sources else list(by_source)
    # Each held-out source is also measured as close-ups of its photos (an object filling the frame), where a
    # larger input loses although it holds on the photos themselves.
    held = {name: photos + close_ups(photos, args.out / name.replace(":", "_")) for name, photos in held.items()}
    all_held = [s for name in folds for s in held[name]]
    args.out.mkdir(parents=True, exist_ok=True)

    # Zero-shot at every size, once over every held-out photo.
    zero = create_model(args.model, num_classes=2, pretrained=True)
    zero_m = {size: validate(zero, all_held, args.out, size) for size in sizes}

    # Fine-tuned: per fold, train on the other sources (no photo of the held-out one, nor its copies elsewhere).
    tuned_m: dict[str, dict[int, object]] = {}
    chosen: dict[str, dict] = {}
    for name in [] if args.no_train else folds:
        groups = {s.group for s in by_source[name]}
        rest = [s for other, samples in by_source.items() if other != name for s in samples if s.group not in groups]
        train_s, val_s = split(rest)
        val_s = one_copy_each(val_s)
        if args.max_images:
            train_s, val_s = train_s[: args.max_images * 2], val_s[: args.max_images]
        run = args.out / f"without-{name.replace(':', '_')}"
        result = train(config, run, progress=False,
                       data=TrainData(train_s, val_s, tuple(u for u in user_sources if u != name)))
        model = load_checkpoint(result.best)
        photos = held[name]
        tuned_m[name] = {size: validate(model, photos, run, size) for size in sizes}
        chosen[name] = {"size": result.size.size, "weights": result.size.weights, "best_epoch": result.best_epoch,
                        "minutes": result.wall_seconds / 60}

    # The table: per held-out source and class, each size; gains against zero-shot at the pretrained size.
    def fmt(cell) -> str:
        if cell.ap is None:
            return "n/a"
        return f"{cell.ap:.3f} ({cell.gain:+.3f} ± {cell.noise:.3f})"

    lines = [f"# Leave-one-source-out: {args.model}, AP@[.5:.95] (gain vs zero-shot at {native} ± bootstrap SD)", "",
             f"CPU: {machine()}; recipe: {json.dumps(fields) if fields else 'default'}", "",
             "| held-out source | class | boxes / photos | size | zero-shot | fine-tuned |",
             "|---|---|---|---:|---|---|"]
    results, worst = [], None
    for name in folds:
        zero_sub = {size: _subset(m, [i for i, s in enumerate(all_held) if s.source in (name, f"{name} close-ups")])
                    for size, m in zero_m.items()}
        for view in (name, f"{name} close-ups"):
            ref = zero_sub[native]
            photos = len(ref.images_of(view))
            for cls in TARGET_CLASSES:
                boxes = ref.num_gt(cls, ref.images_of(view))
                if boxes < min_boxes:
                    lines.append(f"| {view} | {cls} | {boxes} / {photos} | - | not measurable (< {min_boxes} "
                                 "boxes) | |")
                    continue
                for size in sizes:
                    z = compare(zero_sub[size], ref, view, cls)
                    t = compare(tuned_m[name][size], ref, view, cls) if name in tuned_m else None
                    mark = " (chosen)" if name in chosen and chosen[name]["size"] == size else ""
                    lines.append(f"| {view} | {cls} | {boxes} / {photos} | {size}{mark} | {fmt(z)} | "
                                 f"{fmt(t) if t else '-'} |")
                    results.append({"source": view, "class": cls, "size": size, "zero_shot": z.__dict__,
                                    "fine_tuned": t.__dict__ if t else None, "chosen": bool(mark)})
                    if mark and t is not None and (worst is None or t.gain < worst[0]):
                        worst = (t.gain, view, cls, size, t)
    if chosen:
        lines += ["", "| held-out source | size chosen by the run | weights | best epoch | minutes |",
                  "|---|---:|---|---:|---:|"]
        lines += [f"| {n} | {c['size']} | {c['weights']} | {c['best_epoch']} | {c['minutes']:.1f} |"
                  for n, c in chosen.items()]
    if worst is not None:
        _, name, cls, size, t = worst
        lines += ["", (f"Worst held-out cell of the recipe as it chooses its size: {name} {cls} at {size}: "
                  f"{t.gain:+.3f} ± {t.noise:.3f} against the zero-shot model at {native}.")]
    lines += ["", f"{time.perf_counter() - started:.0f} s in all."]
    table = "\n".join(lines) + "\n"
    (args.out / "by_source.md").write_text(table)
    (args.out / "by_source.json").write_text(json.dumps({"results": results, "chosen": chosen}, indent=2,
                                                        default=str))
    print(table)


def _subset(matches, indices: list[int]):
    """``matches`` restricted to the images at ``indices``."""
    from toolkit.evaluate.by_source import Matches

    return Matches(tuple(matches.sources[i] for i in indices),
                   {c: tuple(per[i] for i in indices) for c, per in matches.per_class.items()}, matches.median_ms)


if __name__ == "__main__":
    main()
