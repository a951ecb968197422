"""The deploy pieces that need no board: the unit (systemd-analyze verify), configs, inventories, wheelhouses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from devices.errors import ConfigError
from toolkit.deploy.fleet import load_inventory, plan_hosts, render_table
from toolkit.deploy.profiles import PROFILES, Platform, get_profile
from toolkit.deploy.release import DeployOptions, HostResult, device_config
from toolkit.deploy.unit import UnitSpec, render_unit
from toolkit.deploy.wheelhouse import SOURCE_PARTS, SOURCE_TREE, Wheelhouse, WheelhouseError, source_digest


def _unit(tmp_path: Path, target: str) -> Path:
    """The unit as deploy writes it, installed under tmp_path with its ExecStart present."""
    root, state = tmp_path / "opt", tmp_path / "state"
    exe = root / "current" / "venv" / "bin" / "edgesight"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    spec = UnitSpec("edgesight", str(root), str(state), (f"{state}/spool", f"{state}/snapshots"), "edgesight",
                    get_profile(target), "edgesight camera detector (test)")
    path = tmp_path / "edgesight.service"
    path.write_text(render_unit(spec))
    return path


def _verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("target", sorted(PROFILES))
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, target: str) -> None:
    unit = _unit(tmp_path, target)
    proc = _verify(unit)
    # verify exits 0 on unknown keys and only warns: any output at all is a failure here.
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stderr
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=60", "Restart=on-failure", "User=edgesight", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "ProtectSystem=strict", "DeviceAllow=char-video4linux rw", "DevicePolicy=closed",
                 f"MemoryMax={get_profile(target).memory_max}",
                 f"ReadWritePaths={tmp_path}/state/spool {tmp_path}/state/snapshots", f"ReadOnlyPaths={tmp_path}/opt"):
        assert line in text.splitlines(), line
    assert "SupplementaryGroups=video" in text and "PrivateDevices" not in text


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing program are reported."""
    unit = _unit(tmp_path, "rpi")
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "NoNewPrivilege" in _verify(unit).stderr
    (tmp_path / "opt" / "current" / "venv" / "bin" / "edgesight").unlink()
    assert _verify(unit).returncode != 0


def _config(**extra: object) -> dict:
    return {"source": {"uri": "/srv/videos/vtest.avi", "loop": True}, **extra}


def test_device_config_fills_the_profile_and_state_paths() -> None:
    options = DeployOptions()
    dev = device_config(_config(sinks={"jsonl": {"path": "events/events.jsonl"}}), get_profile("rpi"), options,
                        "/opt/edgesight/releases/x/bundle", cores=4, host="pi@board")
    import yaml

    data = yaml.safe_load(dev.text)
    assert data["bundle"] == "/opt/edgesight/releases/x/bundle" and data["threads"] == 4
    assert data["runtime"] == "ai_edge_litert" and data["source"]["uri"] == "/srv/videos/vtest.avi"
    assert data["events"]["spool"] == "/var/lib/edgesight/spool/events.sqlite"
    assert dev.writable == ("/var/lib/edgesight/spool", "/var/lib/edgesight/snapshots", "/var/lib/edgesight/events")
    assert dev.health_url == "http://127.0.0.1:8080/healthz"
    # No source in the config: the target's camera.
    assert yaml.safe_load(device_config({}, get_profile("rpi"), options, "/b", 4, "h").text)["source"]["uri"] == \
        "csi://0"
    # Workers share the cores: 4 cores, 2 workers of 2 threads.
    assert yaml.safe_load(device_config(_config(workers=2), get_profile("rpi"), options, "/b", 4, "h").text)[
        "threads"] == 2


def test_device_config_errors_name_host_and_field() -> None:
    with pytest.raises(ConfigError, match=r"pi@board(.|\n)*tracker.iou"):
        device_config(_config(tracker={"iou": 7}), get_profile("rpi"), DeployOptions(), "/b", 4, "pi@board")
    with pytest.raises(ConfigError, match="healthz"):
        device_config(_config(http=None), get_profile("rpi"), DeployOptions(), "/b", 4, "pi@board")
    with pytest.raises(ConfigError, match="not offered for target 'jetson'"):
        device_config(_config(runtime="ai_edge_litert"), get_profile("jetson"), DeployOptions(target="jetson"),
                      "/b", 4, "h")


def test_inventory_merges_overrides_per_host(tmp_path: Path) -> None:
    (tmp_path / "camera.yaml").write_text("camera: yard\nsource: {uri: csi://0}\nhttp: {port: 8080}\n")
    (tmp_path / "hosts.yaml").write_text(
        "defaults: {config: camera.yaml}\nhosts:\n"
        "  - host: pi@gate\n    overrides: {camera: gate, source: {uri: 'rtsp://cam/1'}, http: {port: 8181}}\n"
        "  - host: nano\n    target: jetson\n")
    planned = plan_hosts(["pi@extra"], tmp_path / "hosts.yaml", None, DeployOptions())
    by_host = {p.host: p for p in planned}
    assert by_host["pi@gate"].config == {"camera": "gate", "source": {"uri": "rtsp://cam/1"}, "http": {"port": 8181}}
    assert by_host["nano"].options.target == "jetson" and by_host["nano"].config["camera"] == "yard"
    (tmp_path / "bad.yaml").write_text("hosts:\n  - host: a\n    overides: {}\n")
    with pytest.raises(ConfigError, match="overides"):
        load_inventory(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="more than once"):
        plan_hosts(["a", "a"], None, None, DeployOptions())


def test_table_says_what_each_host_runs() -> None:
    table = render_table([HostResult("pi@a", "deployed", "abc", "b (123)", "healthy", 3.2),
                          HostResult("pi@b", "unreachable", detail="cannot log in to pi@b over SSH: refused")])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["host", "result", "release"]
    assert "deployed" in lines[1] and "abc" in lines[1]
    assert "unreachable" in lines[2] and "refused" in lines[2]


def test_platform_tags_and_wheelhouse_checks(tmp_path: Path) -> None:
    tags = Platform("aarch64", "3.11", "2.36").pip_platforms()
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    wheel = tmp_path / "numpy-1.0-cp311-cp311-manylinux_2_17_aarch64.whl"
    wheel.write_bytes(b"wheel")
    index = {"target": "rpi", "runtime": "ai_edge_litert", "platform": {"arch": "aarch64", "python": "3.11",
             "glibc": "2.36"}, "requirements": ["edgesight[device,tflite]"], "files": {wheel.name: "0" * 64}}
    (tmp_path / "wheelhouse.json").write_text(json.dumps(index))
    with pytest.raises(WheelhouseError, match="differs"):
        Wheelhouse.load(tmp_path)
    import hashlib

    index["files"][wheel.name] = hashlib.sha256(b"wheel").hexdigest()
    (tmp_path / "wheelhouse.json").write_text(json.dumps(index))
    house = Wheelhouse.load(tmp_path)
    with pytest.raises(WheelhouseError, match="x86_64"):
        house.check_fits(Platform("x86_64", "3.11", "2.36"))


def test_jetson_tensorrt_gets_an_engine_cache_and_fallback_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """What can be checked without a Jetson: the options TensorRT is opened with, and the loud warning
    when ONNX Runtime ends on another provider than asked (it falls back silently)."""
    from devices.backends.onnxrt import TRT_CACHE_ENV, warn_on_fallback, with_provider_options

    monkeypatch.setenv(TRT_CACHE_ENV, str(tmp_path / "trt"))
    trt, cuda, cpu = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    options = with_provider_options([trt, cuda, cpu])
    assert options[0] == (trt, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path / "trt"),
                                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path / "trt")})
    assert options[1:] == [cuda, cpu] and (tmp_path / "trt").is_dir()
    assert "EDGESIGHT_TRT_CACHE=/var/lib/edgesight/trt-cache" in get_profile("jetson").environment
    assert not warn_on_fallback([cpu], [cpu], [cpu])
    assert warn_on_fallback([trt, cuda, cpu], [cpu], [trt, cuda, cpu])
    assert "!!! ONNX Runtime runs on CPUExecutionProvider, not on TensorrtExecutionProvider" in caplog.text


def test_the_cached_project_wheel_is_rebuilt_when_the_live_page_changes(tmp_path: Path) -> None:
    """The wheel deploy ships is cached by a digest of its sources; the live page's JavaScript counts too."""
    tree = tmp_path / "tree"
    for part in SOURCE_PARTS:
        src = SOURCE_TREE / part
        if src.is_dir():
            shutil.copytree(src, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, tree / part)
    before = source_digest(tree)
    assert source_digest(tree) == before
    (tree / "devices" / "daemon" / "__pycache__").mkdir(exist_ok=True)
    (tree / "devices" / "daemon" / "__pycache__" / "x.pyc").write_bytes(b"byte code")
    assert source_digest(tree) == before  # byte code is not a source
    page = next((tree / "devices").rglob("*.js"))
    page.write_text(page.read_text() + "\n// changed\n")
    assert source_digest(tree) != before
