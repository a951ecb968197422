"""``edgesight deploy`` against real boards' stand-ins: Debian with systemd and sshd in containers.

Each "board" is the cached ``device`` root filesystem (tests/rootfs.py) booted by systemd-nspawn with a
throw-away overlay: real systemd as PID 1 (so Type=notify, the watchdog, the sandbox and journald are the
real ones), real sshd on a loopback port, a ``pi`` login with passwordless sudo, no internet use (the
device install comes from the x86_64 wheelhouse with --no-index). The daemon runs vtest.avi in a loop
as its camera. Only the CPU differs from a Pi: the aarch64 userspace is proven in test_arm64.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import rootfs
from tests.conftest import REPO, TEST_WHEELHOUSES

pytestmark = pytest.mark.slow

BUNDLE = "yolox-nano-tflite-int8"


@pytest.fixture(scope="module")
def device_root() -> Path:
    root = rootfs.cached(rootfs.DEVICE)
    if root is None:
        pytest.skip(f"device root filesystem not built in {rootfs.CACHE}: run `make rootfs`")
    return root


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    folder = TEST_WHEELHOUSES / "rpi-x86_64"
    if not (folder / "wheelhouse.json").is_file():
        pytest.skip(f"wheelhouse {folder} missing: run `make wheelhouses`")
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, device_root: Path, mirror: Path):
    """Two booted boards (dev1, dev2) and an ssh_config that also names a dead one and a wrong key."""
    work = tmp_path_factory.mktemp("boards")
    for name in ("key", "otherkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True)
    binds = {mirror / "videos": "/srv/videos"}
    hosts = {name: rootfs.DeviceHost(device_root, name, work / "key.pub", work / name, binds)
             for name in ("dev1", "dev2")}
    try:
        for host in hosts.values():
            host.start()
        config = "".join(h.ssh_config(work / "key") for h in hosts.values())
        config += hosts["dev1"].ssh_config(work / "otherkey", alias="badkey")
        config += (f"Host dead\n  HostName 127.0.0.1\n  Port {rootfs.free_port()}\n  User pi\n"
                   f"  IdentityFile {work / 'key'}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
        (work / "ssh_config").write_text(config)
        ports = {name: rootfs.free_port() for name in hosts}
        for name, port in ports.items():
            (work / f"{name}.yaml").write_text(yaml.safe_dump(
                {"camera": f"{name}-yard", "source": {"uri": "/srv/videos/vtest.avi", "loop": True, "realtime": True},
                 "http": {"port": port}}))
        yield {"work": work, "hosts": hosts, "ports": ports}
    finally:
        for host in hosts.values():
            host.stop()


def edgesight(lab: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGESIGHT_SSH_CONFIG": str(lab["work"] / "ssh_config")}
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def on_board(lab: dict, host: str, command: str) -> str:
    proc = subprocess.run(["ssh", "-F", str(lab["work"] / "ssh_config"), host, command], capture_output=True,
                          text=True, timeout=60, check=False)
    return proc.stdout + proc.stderr


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def api_status(lab: dict, host: str) -> dict:
    return json.loads(get(f"http://127.0.0.1:{lab['ports'][host]}/api/status")[1])


def test_wrong_key_host_or_wheelhouse_fails_clearly_and_installs_nothing(lab: dict, test_bundles: Path,
                                                                        wheelhouse: Path) -> None:
    bundle = str(test_bundles / BUNDLE)
    cfg = str(lab["work"] / "dev1.yaml")
    badkey = edgesight(lab, "deploy", bundle, "--host", "badkey", "--config", cfg, "--wheelhouse", str(wheelhouse))
    assert badkey.returncode == 1
    assert "cannot log in to badkey over SSH" in badkey.stderr and "Permission denied (publickey)" in badkey.stderr
    assert "ssh-copy-id" in badkey.stderr and "unreachable" in badkey.stdout
    dead = edgesight(lab, "deploy", bundle, "--host", "dead", "--config", cfg, "--wheelhouse", str(wheelhouse))
    assert dead.returncode == 1 and "Connection refused" in dead.stderr
    # An aarch64 wheelhouse for this x86_64 board is refused before anything is copied.
    arm = edgesight(lab, "deploy", bundle, "--host", "dev1", "--config", cfg, "--wheelhouse",
                    str(TEST_WHEELHOUSES / "rpi"))
    assert arm.returncode == 1 and "aarch64" in arm.stderr and "--arch x86_64" in arm.stderr
    left = on_board(lab, "dev1", "ls -d /opt/edgesight ~/.cache/edgesight-deploy /etc/systemd/system/edgesight.service")
    assert left.count("No such file or directory") == 3, left


def test_deploy_installs_the_service_under_systemd(lab: dict, test_bundles: Path, wheelhouse: Path) -> None:
    proc = edgesight(lab, "deploy", str(test_bundles / BUNDLE), "--host", "dev1", "--config",
                     str(lab["work"] / "dev1.yaml"), "--wheelhouse", str(wheelhouse))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[:2] == ["dev1", "deployed"], proc.stdout
    status, body = get(f"http://127.0.0.1:{lab['ports']['dev1']}/healthz")
    assert status == 200, body
    assert api_status(lab, "dev1")["camera"] == "dev1-yard"
    # systemd runs the unit's own command line, as the dedicated user in the video group, sandboxed.
    shown = on_board(lab, "dev1", "systemctl show edgesight -p ExecStart -p Type -p WatchdogUSec -p MemoryMax "
                                  "-p ProtectSystem -p User; ps -o user=,supgrp= -C edgesight")
    assert "argv[]=/opt/edgesight/current/venv/bin/edgesight run --config /opt/edgesight/current/camera.yaml" in shown
    for line in ("Type=notify", "WatchdogUSec=1min", "MemoryMax=805306368", "ProtectSystem=strict", "User=edgesight"):
        assert line in shown, shown
    assert "video" in shown.splitlines()[-1]
    verify = on_board(lab, "dev1", "systemd-analyze verify /etc/systemd/system/edgesight.service && echo VERIFIED")
    assert verify.strip() == "VERIFIED", verify
    # The bundle belongs to root, mode 444 (and the sandbox mounts /opt read-only for the service).
    modes = on_board(lab, "dev1", f"stat -c '%a %U' /opt/edgesight/current/{BUNDLE}/*.tflite")
    assert modes.strip() == "444 root", modes


def test_deploy_twice_changes_nothing(lab: dict, test_bundles: Path, wheelhouse: Path) -> None:
    before = on_board(lab, "dev1", "systemctl show edgesight -p MainPID -p ExecMainStartTimestamp")
    proc = edgesight(lab, "deploy", str(test_bundles / BUNDLE), "--host", "dev1", "--config",
                     str(lab["work"] / "dev1.yaml"), "--wheelhouse", str(wheelhouse))
    assert proc.returncode == 0 and "unchanged" in proc.stdout and "already runs this bundle and config" in proc.stdout
    assert on_board(lab, "dev1", "systemctl show edgesight -p MainPID -p ExecMainStartTimestamp") == before


def _changed_config(lab: dict, name: str, camera: str) -> Path:
    data = yaml.safe_load((lab["work"] / f"{name}.yaml").read_text())
    data["camera"] = camera
    path = lab["work"] / f"{name}-{camera}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _broken_bundle(test_bundles: Path, folder: Path) -> Path:
    """A bundle whose manifest matches its files but whose model is cut short: it passes the workstation's
    hash check and fails on the board, as a bad export or a disk error would."""
    import hashlib

    broken = folder / "broken-bundle"
    shutil.copytree(test_bundles / BUNDLE, broken)
    model = next(broken.glob("*.tflite"))
    model.chmod(0o644)
    model.write_bytes(model.read_bytes()[:300_000])
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["files"][model.name] = hashlib.sha256(model.read_bytes()).hexdigest()
    (broken / "manifest.json").chmod(0o644)
    (broken / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return broken


def test_new_config_then_broken_bundle_rolls_back(lab: dict, test_bundles: Path, wheelhouse: Path) -> None:
    config = _changed_config(lab, "dev1", "dev1-gate")
    proc = edgesight(lab, "deploy", str(test_bundles / BUNDLE), "--host", "dev1", "--config", str(config),
                     "--wheelhouse", str(wheelhouse))
    assert proc.returncode == 0 and " deployed " in proc.stdout, proc.stderr
    assert api_status(lab, "dev1")["camera"] == "dev1-gate"
    good = on_board(lab, "dev1", "readlink /opt/edgesight/current").strip()
    broken = _broken_bundle(test_bundles, lab["work"])
    proc = edgesight(lab, "deploy", str(broken), "--host", "dev1", "--config", str(config),
                     "--wheelhouse", str(wheelhouse))
    assert proc.returncode == 1 and "rolled_back" in proc.stdout, proc.stdout + proc.stderr
    assert "is not a complete TFLite model" in proc.stderr  # the journal of the failed start
    assert on_board(lab, "dev1", "readlink /opt/edgesight/current").strip() == good
    assert get(f"http://127.0.0.1:{lab['ports']['dev1']}/healthz")[0] == 200
    assert api_status(lab, "dev1")["camera"] == "dev1-gate"
    assert "broken-bundle" not in on_board(lab, "dev1", "ls /opt/edgesight/releases/*/")


def test_status_logs_and_rollback(lab: dict) -> None:
    status = edgesight(lab, "deploy", "--host", "dev1", "--status")
    assert status.returncode == 0, status.stderr
    assert "active (running)" in status.stdout and "health    ok" in status.stdout and BUNDLE in status.stdout
    assert "camera=dev1-gate" in status.stdout
    logs = edgesight(lab, "deploy", "--host", "dev1", "--logs", "--lines", "50")
    assert logs.returncode == 0 and "devices.daemon.service" in logs.stdout
    back = edgesight(lab, "deploy", "--host", "dev1", "--rollback")
    assert back.returncode == 0 and "rolled_back" in back.stdout, back.stdout + back.stderr
    assert api_status(lab, "dev1")["camera"] == "dev1-yard"


def test_fleet_with_an_unreachable_host(lab: dict, test_bundles: Path, wheelhouse: Path) -> None:
    """dev2 is a fresh board (full install from the wheelhouse), dead never answers: the table says so."""
    inventory = lab["work"] / "fleet.yaml"
    inventory.write_text(yaml.safe_dump({"hosts": [
        {"host": "dev1", "overrides": {"camera": "dev1-fleet"}},
        {"host": "dead"},
        {"host": "dev2", "overrides": {"camera": "dev2-fleet", "http": {"port": lab["ports"]["dev2"]}}},
    ]}))
    proc = edgesight(lab, "deploy", str(test_bundles / BUNDLE), "--inventory", str(inventory), "--config",
                     str(lab["work"] / "dev1.yaml"), "--wheelhouse", str(wheelhouse), "--parallel", "3")
    assert proc.returncode == 1, proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:]}
    assert rows == {"dev1": "deployed", "dead": "unreachable", "dev2": "deployed"}, proc.stdout
    assert api_status(lab, "dev1")["camera"] == "dev1-fleet" and api_status(lab, "dev2")["camera"] == "dev2-fleet"


def test_staged_rollout_stops_when_the_first_host_fails(lab: dict, test_bundles: Path, wheelhouse: Path) -> None:
    before = on_board(lab, "dev2", "readlink /opt/edgesight/current")
    config = _changed_config(lab, "dev2", "dev2-staged")
    proc = edgesight(lab, "deploy", str(test_bundles / BUNDLE), "--host", "dead", "--host", "dev2", "--config",
                     str(config), "--wheelhouse", str(wheelhouse), "--staged")
    assert proc.returncode == 1
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:]}
    assert rows == {"dead": "unreachable", "dev2": "skipped"}, proc.stdout
    assert on_board(lab, "dev2", "readlink /opt/edgesight/current") == before
