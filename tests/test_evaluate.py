"""COCO evaluation on hand-made cases whose AP is known, PR-curve output, and detection drawing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.draw import class_colour, draw_detections
from devices.errors import DataError
from devices.types import Detections
from models.base import COCO80
from toolkit.evaluate import EvalResult, evaluate, match_categories

LABELS = ("pedestrian", "stop_sign")
PERSON_ID, STOP_ID, CAR_ID = 1, 13, 3  # COCO's own, non-contiguous ids

# Three images of different sizes (the fake detector recognises them by size), saved in three formats:
# colour JPEG, gray PNG and RGBA PNG, which the loader must all hand over as BGR uint8.
IMAGES = {
    101: ("street.jpg", (240, 320), "bgr"),
    205: ("gray.png", (300, 200), "gray"),
    309: ("alpha.png", (400, 400), "bgra"),
}
# Ground truth xywh per image: (category, box).
GT = {
    101: [(PERSON_ID, (40, 50, 60, 120)), (STOP_ID, (200, 30, 50, 50))],
    205: [(PERSON_ID, (20, 100, 50, 150)), (CAR_ID, (100, 10, 80, 40))],
    309: [(PERSON_ID, (150, 150, 100, 200)), (STOP_ID, (10, 10, 80, 80))],
}
CLASS_OF = {PERSON_ID: 0, STOP_ID: 1}


def _write_dataset(root: Path, categories: list[dict] | None = None, drop_stop_gt: bool = False) -> Path:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for img_id, (name, (h, w), kind) in IMAGES.items():
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if kind == "gray":
            pixels = pixels[:, :, 0]
        elif kind == "bgra":
            pixels = np.dstack([pixels, np.full((h, w), 255, np.uint8)])
        cv2.imwrite(str(root / name), pixels)
        images.append({"id": img_id, "file_name": name, "width": w, "height": h})
        for cat, box in GT[img_id]:
            if drop_stop_gt and cat == STOP_ID:
                continue
            # No 'area' or 'iscrowd': hand-made files often omit them.
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": list(box)})
    cats = categories or [
        {"id": PERSON_ID, "name": "person"},
        {"id": CAR_ID, "name": "car"},
        {"id": STOP_ID, "name": "stop sign"},
    ]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _detector(per_image: dict[int, list[tuple[int, tuple, float]]]) -> Callable[[np.ndarray], Detections]:
    """A fake detector returning prepared (class, xywh, score) per image, recognised by its size."""
    by_shape = {IMAGES[i][1]: dets for i, dets in per_image.items()}
    seen = []

    def detect(img: np.ndarray) -> Detections:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, img.shape
        seen.append(img.shape[:2])
        dets = by_shape.get(img.shape[:2], [])
        if not dets:
            return Detections.empty()
        boxes = np.array([[x, y, x + w, y + h] for _, (x, y, w, h), _ in dets], np.float32)
        scores = np.array([s for _, _, s in dets], np.float32)
        return Detections(boxes, scores, np.array([c for c, _, _ in dets], np.int64))

    detect.seen = seen  # type: ignore[attr-defined]
    return detect


def _perfect(shift: float = 0.0) -> dict[int, list]:
    """The ground truth as predictions, each box moved right by ``shift`` of its width."""
    return {
        i: [(CLASS_OF[c], (x + shift * w, y, w, h), 0.9) for c, (x, y, w, h) in boxes if c in CLASS_OF]
        for i, boxes in GT.items()
    }


def _eval(tmp_path: Path, per_image: dict, **kw) -> EvalResult:
    coco_json = _write_dataset(tmp_path, **{k: kw.pop(k) for k in ("categories", "drop_stop_gt") if k in kw})
    return evaluate(_detector(per_image), coco_json, tmp_path, LABELS, **kw)


def test_perfect_predictions_score_one_for_both_classes(tmp_path: Path) -> None:
    res = _eval(tmp_path, _perfect())
    assert [c.name for c in res.classes] == ["pedestrian", "stop_sign"]
    for c in res.classes:
        assert c.ap == pytest.approx(1.0) and c.ap50 == pytest.approx(1.0)
    assert res.map == pytest.approx(1.0) and res.num_images == 3
    assert res.by_name("pedestrian").num_gt == 3 and res.by_name("stop_sign").num_gt == 2
    assert res.by_name("stop_sign").num_images == 2
    assert res.coco_stats[0] == pytest.approx(1.0)


def test_shifted_boxes_lower_ap_by_the_iou_they_keep(tmp_path: Path) -> None:
    # A shift of 10 % of the width leaves IoU 0.9/1.1 = 0.818: a hit at IoU 0.50..0.80 (7 of the 10
    # thresholds), a miss at 0.85..0.95, so AP@[.5:.95] = 0.7 while AP@0.5 stays 1.
    res = _eval(tmp_path, _perfect(shift=0.1))
    for c in res.classes:
        assert c.ap50 == pytest.approx(1.0)
        assert c.ap == pytest.approx(0.7)


def test_boxes_shifted_below_iou_half_score_zero(tmp_path: Path) -> None:
    res = _eval(tmp_path, _perfect(shift=0.4))  # IoU 0.6/1.4 = 0.43 < 0.5
    assert res.map50 == pytest.approx(0.0) and res.map == pytest.approx(0.0)


def test_false_positive_ranked_above_a_true_positive_lowers_ap(tmp_path: Path) -> None:
    preds = _perfect()
    preds[101] = [(0, (40, 50, 60, 120), 0.95), (1, (200, 30, 50, 50), 0.9)]
    preds[309] = [(0, (150, 150, 100, 200), 0.7), (1, (10, 10, 80, 80), 0.9)]
    preds[205] = [(0, (20, 100, 50, 150), 0.9), (0, (120, 200, 40, 80), 0.8)]  # FP between TPs
    res = _eval(tmp_path, preds)
    # Ranked TP, TP, FP, TP: precision 1 up to recall 2/3, then 3/4 at recall 1; COCO samples 101
    # recall points: 67 at precision 1 (0.00..0.66) and 34 at 0.75.
    assert res.by_name("pedestrian").ap50 == pytest.approx((67 + 34 * 0.75) / 101)
    assert res.by_name("stop_sign").ap50 == pytest.approx(1.0)

    # The same false positive ranked below every true positive costs nothing.
    preds[205][1] = (0, (120, 200, 40, 80), 0.5)
    assert _eval(tmp_path, preds).by_name("pedestrian").ap50 == pytest.approx(1.0)


def test_no_predictions_give_zero_ap_and_still_write_outputs(tmp_path: Path) -> None:
    res = _eval(tmp_path, {}, save_predictions=tmp_path / "p.json", pr_curve=tmp_path / "pr.png")
    assert [c.ap for c in res.classes] == [0.0, 0.0] and res.map == 0.0 and res.map50 == 0.0
    assert json.loads((tmp_path / "p.json").read_text()) == []
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_category_without_ground_truth_is_reported_and_left_out_of_the_mean(tmp_path: Path) -> None:
    preds = _perfect(shift=0.1)  # pedestrian AP 0.7; the stop-sign detections are all false positives
    res = _eval(tmp_path, preds, drop_stop_gt=True)
    stop = res.by_name("stop_sign")
    assert stop.ap is None and stop.ap50 is None and stop.num_gt == 0 and stop.num_detections == 2
    assert res.map == pytest.approx(0.7)
    assert "stop_sign | no GT" in res.table() and "excluded from the mean" in res.table()
    assert json.loads(json.dumps(res.to_dict()))["classes"][1]["ap"] is None


def test_predictions_file_uses_the_annotation_files_ids_and_original_pixels(tmp_path: Path) -> None:
    preds = _perfect()
    res = _eval(tmp_path, preds, save_predictions=tmp_path / "out" / "pred.json")
    saved = json.loads((tmp_path / "out" / "pred.json").read_text())
    assert len(saved) == 5 and res.by_name("pedestrian").num_detections == 3
    got = {(d["image_id"], d["category_id"], tuple(d["bbox"]), d["score"]) for d in saved}
    want = {(i, c, tuple(float(v) for v in box), 0.9) for i, boxes in GT.items() for c, box in boxes if c != CAR_ID}
    assert {(i, c, b) for i, c, b, _ in got} == {(i, c, b) for i, c, b, _ in want}
    assert all(s == pytest.approx(0.9) for *_, s in got)


def test_pr_curve_png_is_written(tmp_path: Path) -> None:
    _eval(tmp_path, _perfect(shift=0.1), pr_curve=tmp_path / "plots" / "pr.png")
    png = tmp_path / "plots" / "pr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 400


def test_detector_gets_every_image_as_bgr_at_its_original_size(tmp_path: Path) -> None:
    coco_json = _write_dataset(tmp_path)
    det = _detector({})
    evaluate(det, coco_json, tmp_path, LABELS)
    assert sorted(det.seen) == sorted(shape for _, shape, _ in IMAGES.values())


def test_images_dir_none_takes_paths_relative_to_the_json(tmp_path: Path) -> None:
    coco_json = _write_dataset(tmp_path)
    assert evaluate(_detector(_perfect()), coco_json, None, LABELS).map == pytest.approx(1.0)


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    coco_json = _write_dataset(tmp_path)
    (tmp_path / "gray.png").unlink()
    with pytest.raises(DataError, match=r"gray\.png"):
        evaluate(_detector({}), coco_json, tmp_path, LABELS)


def test_categories_match_by_name_with_synonyms() -> None:
    coco80 = [{"id": i + 1, "name": n} for i, n in enumerate(COCO80)]
    matched = match_categories(LABELS, coco80)
    assert {i: c["name"] for i, c in matched.items()} == {0: "person", 1: "stop sign"}
    assert match_categories(["person", "stop sign"], [{"id": 7, "name": "Pedestrian"}]) == {
        0: {"id": 7, "name": "Pedestrian"}
    }
    with pytest.raises(DataError, match="no category"):
        match_categories(LABELS, [{"id": 1, "name": "car"}])
    with pytest.raises(DataError, match="several categories"):
        match_categories(LABELS, [{"id": 1, "name": "person"}, {"id": 2, "name": "pedestrian"}])


def test_unmatched_label_is_not_evaluated(tmp_path: Path) -> None:
    cats = [{"id": PERSON_ID, "name": "pedestrian"}, {"id": CAR_ID, "name": "car"}, {"id": STOP_ID, "name": "x"}]
    res = _eval(tmp_path, _perfect(), categories=cats)
    assert [c.name for c in res.classes] == ["pedestrian"] and res.map == pytest.approx(1.0)


# --- drawing -----------------------------------------------------------------------------------------


def test_draw_detections_boxes_labels_and_threshold() -> None:
    img = np.full((480, 640, 3), 128, np.uint8)
    det = Detections(
        np.array([[100, 120, 200, 400], [400, 5, 500, 100]], np.float32),
        np.array([0.9, 0.1], np.float32),
        np.array([0, 1], np.int64),
    )
    out = draw_detections(img, det, LABELS, min_score=0.3)
    assert out is not img and (img == 128).all(), "the input frame must stay untouched"
    # The pedestrian box's left edge is in the class colour; the low-scored stop sign is not drawn.
    assert tuple(out[300, 100]) == class_colour(0)
    assert (out[50:60, 450] == 128).all()
    # The label sits on a filled background above the box, holding text of another colour.
    label = out[95:118, 101:160].reshape(-1, 3)
    assert (label == class_colour(0)).all(1).mean() > 0.5 and (label != class_colour(0)).any(1).any()
    assert class_colour(0) != class_colour(1)
    shown = draw_detections(img, det, LABELS, min_score=0.05)
    assert tuple(shown[50, 400]) == class_colour(1)


def test_draw_keeps_labels_of_boxes_with_the_same_top_apart() -> None:
    # Two detections one behind the other: the better one keeps its label above the box; the other's label
    # moves inside its own box instead of hiding under the first.
    img = np.full((480, 640, 3), 128, np.uint8)
    det = Detections(
        np.array([[100, 120, 200, 400], [104, 123, 204, 400]], np.float32),
        np.array([0.9, 0.6], np.float32),
        np.array([0, 1], np.int64),
    )
    out = draw_detections(img, det, LABELS)
    above = out[95:118, 101:160].reshape(-1, 3)
    assert (above == class_colour(0)).all(1).mean() > 0.5 and not (above == class_colour(1)).all(1).any()
    inside = out[126:146, 106:160].reshape(-1, 3)
    assert (inside == class_colour(1)).all(1).mean() > 0.5


def test_draw_scales_line_width_with_the_image() -> None:
    det = Detections(np.array([[0.1, 0.1, 0.6, 0.9]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64))

    def edge_width(size: int) -> int:
        img = np.zeros((size, size, 3), np.uint8)
        out = draw_detections(img, Detections(det.boxes * size, det.scores, det.class_ids), LABELS)
        row = out[size // 2, : size // 3]
        return int((row == class_colour(0)).all(1).sum())

    assert edge_width(2000) > 2 * edge_width(300)


@pytest.mark.parametrize("bbox", [[40, 50, -60, 120], [40, 50, 60, 0], [40, 50, "60", 120], [40, 50, 60]])
def test_a_box_without_positive_width_and_height_is_refused_naming_the_annotation(tmp_path: Path, bbox) -> None:
    coco_json = _write_dataset(tmp_path)
    data = json.loads(coco_json.read_text())
    data["annotations"][2]["bbox"] = bbox
    coco_json.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances\.json: annotation id 3 \(image_id 205\): bbox") as exc:
        evaluate(_detector(_perfect()), coco_json, tmp_path, LABELS)
    assert "fix" in str(exc.value)
