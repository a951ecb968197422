"""The device install (``.[device,tflite,onnx]``: no torch, no Pillow) checks a bundle on the board.

A user copies a bundle to the Raspberry Pi and checks it against their own photos there, as its
REPORT.md says: ``edgesight eval``, ``predict`` and ``bench`` of a bundle run from the device install, give
what the workstation gives, and load no workstation module. A command that needs the workstation
install says so in one message instead of a traceback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devices.runner import BundleDetector
from toolkit.evaluate import EVAL_SCORE_THRESHOLD, evaluate

#: Modules the device path must never load (torch and Pillow are not even installed there).
WORKSTATION = ("torch", "torchvision", "PIL", "matplotlib", "toolkit.data", "toolkit.train", "toolkit.export")

#: Runs the CLI in the device venv's interpreter, then reports which workstation modules got loaded.
RUN_CLI = f"""
import json, sys
from toolkit.cli import main
sys.argv = ["edgesight", *sys.argv[1:]]
try:
    main()
finally:
    loaded = sorted(m for m in sys.modules if m.startswith({WORKSTATION}))
    print("LOADED " + json.dumps(loaded), file=sys.stderr)
"""


def _device(device_bin: Path, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([str(device_bin / "python"), "-c", RUN_CLI, *args], capture_output=True, text=True,
                         timeout=300)
    loaded = json.loads(run.stderr.rsplit("LOADED ", 1)[1])
    assert loaded == [], f"the device path loaded workstation modules: {loaded}"
    return run


@pytest.fixture(scope="module")
def photos(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small COCO json of real photos with people and stop signs (absolute file names)."""
    from toolkit.data import load_dataset, to_coco

    people = [s for s in load_dataset("coco128", mirror) if 0 in s.labels.tolist()][:4]
    signs = [s for s in load_dataset("roadsign_kaggle_stop", mirror) if 1 in s.labels.tolist()][:3]
    return to_coco(people + signs, tmp_path_factory.mktemp("photos") / "photos.json")


@pytest.mark.parametrize("bundle", ["yolox-nano-tflite-int8", "yolox-nano-onnx-fp32"])
def test_eval_of_a_bundle_on_the_device_gives_the_workstation_ap(
    device_bin: Path, test_bundles: Path, photos: Path, bundle: str
) -> None:
    run = _device(device_bin, "eval", str(test_bundles / bundle), "--coco", str(photos), "--json")
    assert run.returncode == 0, run.stderr
    on_device = json.loads(run.stdout)
    with BundleDetector(test_bundles / bundle, score_threshold=EVAL_SCORE_THRESHOLD) as detector:
        here = evaluate(detector, photos, None, detector.labels).to_dict()
    assert on_device["num_images"] == 7 and on_device["map"] is not None
    assert [(c["name"], c["ap"], c["ap50"]) for c in on_device["classes"]] == [
        (c["name"], c["ap"], c["ap50"]) for c in here["classes"]
    ]


def test_predict_and_bench_of_a_bundle_run_on_the_device(
    device_bin: Path, test_bundles: Path, photos: Path, tmp_path: Path
) -> None:
    bundle = str(test_bundles / "yolox-nano-tflite-int8")
    files = [str(photos.parent / img["file_name"]) for img in json.loads(photos.read_text())["images"]][:2]
    run = _device(device_bin, "predict", bundle, *files, "--out", str(tmp_path / "annotated"))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == sorted(f"{Path(f).stem}.jpg" for f in files)
    assert run.stdout.count("detections") == 2

    run = _device(device_bin, "bench", bundle, "--coco", str(photos), "--threads", "1", "--frames", "2", "--no-hog",
                  "--no-peers", "--out", str(tmp_path / "bench"))
    assert run.returncode == 0, run.stderr
    table = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [row["name"] for row in table["rows"]] == ["yolox-nano-tflite-int8"]
    assert not (tmp_path / "bench" / "bench.png").exists()  # no matplotlib on the device: said in the log
    assert "no bench.png" in run.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--epochs", "1"], "`edgesight train` (the workstation install) needs the package 'torch'"),
        (["data"], "`edgesight data` (the workstation install) needs the package 'pillow'"),
        (["export", "best.pt", "--all", "--out", "x"], "`edgesight export` (the workstation install) needs"),
        (["eval", "CHECKPOINT", "--coco", "PHOTOS"], "in PyTorch needs the package 'torch'"),
        (["bench", "BUNDLE", "--no-hog"], "bench without --coco"),
    ],
)
def test_workstation_commands_say_what_to_install(
    device_bin: Path, test_bundles: Path, photos: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"a checkpoint")
    swap = {"CHECKPOINT": str(checkpoint), "PHOTOS": str(photos), "BUNDLE": str(test_bundles / "yolox-nano-onnx-fp32")}
    args = [swap.get(a, a) for a in args]
    if args[0] == "export":
        args[1] = str(checkpoint)
    run = subprocess.run([str(device_bin / "edgesight"), *args], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert says in run.stderr and "pip install 'edgesight[" in run.stderr
    assert "Traceback" not in run.stderr
