"""The benchmark: one bundle beside HOG (and the peers) on a few real photos writes a table, JSON and a plot
whose numbers a user can read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devices.bundle import Manifest, write_labels, write_manifest
from devices.errors import ConfigError
from devices.types import DecodeSpec, InputSpec
from toolkit.evaluate.bench import bench

IMAGES = 3


@pytest.fixture(scope="module")
def bundle(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle around the FastestDet authors' ONNX export (80 COCO labels; person and stop sign among them)."""
    folder = tmp_path_factory.mktemp("bundles") / "fastestdet-authors-onnx"
    folder.mkdir()
    shutil.copyfile(mirror / "weights/fastestdet/FastestDet.onnx", folder / "fastestdet.onnx")
    names = (mirror / "weights/fastestdet/coco.names").read_text().splitlines()
    labels = tuple(n.strip() for n in names if n.strip())
    write_labels(folder, labels)
    write_manifest(
        folder,
        Manifest(
            format="onnx",
            precision="fp32",
            model_file="fastestdet.onnx",
            files={},
            input=InputSpec(width=352, height=352, resize="stretch", scale=1 / 255),
            decode=DecodeSpec(kind="fastestdet", strides=(16,), num_classes=len(labels), score_threshold=0.3),
            labels=labels,
        ),
    )
    return folder


@pytest.fixture(scope="module")
def table(bundle: Path, mirror: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bench")
    return bench([bundle], None, threads=(1,), hog=True, out=out, frames=2, val_limit=IMAGES, mirror=str(mirror))


def test_bench_writes_table_json_and_plot(table) -> None:
    assert set(table.files) == {"markdown", "json", "png"}
    markdown = table.files["markdown"].read_text()
    assert "| fastestdet-authors-onnx | bundle | onnx | fp32 |" in markdown
    assert "| hog | baseline | opencv |" in markdown
    assert table.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(table.files["json"].read_text())
    assert data["num_images"] == IMAGES and data["classes"] == ["pedestrian", "stop_sign"]
    assert {r["name"] for r in data["rows"]} == {"fastestdet-authors-onnx", "hog"}


def test_bench_rows_split_model_call_from_whole_frame(table) -> None:
    (row,) = [r for r in table.rows if r.kind == "bundle"]
    assert row.threads == 1 and row.runs == 2 and row.size_bytes > 100_000
    # The whole frame includes resizing and decoding around the model call.
    assert 0 < row.model_ms <= row.frame_ms
    # AP is keyed by the evaluation set's categories, whatever the model calls them ("person" here).
    assert set(row.ap) == {"pedestrian", "stop_sign"} and row.ap["stop_sign"] is not None
    (hog,) = [r for r in table.rows if r.kind == "baseline"]
    assert hog.model_ms is None and hog.frame_ms > 0 and hog.size_bytes is None


def test_bench_refuses_nothing_to_measure_and_bad_threads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to benchmark"):
        bench([], None, hog=False, out=tmp_path)
    with pytest.raises(ConfigError, match="must be positive"):
        bench([], None, threads=(0,), out=tmp_path)
