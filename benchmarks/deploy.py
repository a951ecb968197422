"""Deploy timings against local boards: a fresh board from a wheelhouse, and redeploys of an installed one.

    python benchmarks/deploy.py --mirror ../shared [--bundle runs/test-bundles/yolox-nano-tflite-int8] [--runs 3]

Each board is the ``device`` root filesystem (``make rootfs``) booted by systemd-nspawn with sshd on a
loopback port (tests/rootfs.py), reached by ``edgesight deploy`` over real SSH; the install comes from
the x86_64 wheelhouse (``make wheelhouses``) with no index. Measured, per run, interleaved:

- fresh: a just-booted board, first deploy (user, venv from the wheelhouse, unit, start, /healthz);
- redeploy, new config: the same software and bundle with another camera name (new release, same venv);
- redeploy, new bundle: the same bundle under another folder name (new release, same venv);
- redeploy, no change: the same bundle and config again (probe only).

Targets (issue 13): a fresh board ≤ 2 min, a redeploy ≤ 10 s. Times are the CLI's wall time, Python start-up
and bundle verification included, on this machine (named in the output), so they include the board's side:
the board and the workstation share these CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devices.host import machine  # noqa: E402
from tests import rootfs  # noqa: E402


def deploy(ssh_config: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGESIGHT_SSH_CONFIG": str(ssh_config)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "toolkit", "deploy", *args], capture_output=True, text=True,
                          env=env, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed: {proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout.splitlines()[1].split()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=Path(os.environ.get("EDGESIGHT_MIRROR", "../shared")))
    parser.add_argument("--bundle", type=Path, default=REPO / "runs" / "test-bundles" / "yolox-nano-tflite-int8")
    parser.add_argument("--wheelhouse", type=Path, default=REPO / "runs" / "wheelhouse" / "rpi-x86_64")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = rootfs.cached(rootfs.DEVICE)
    if root is None:
        raise SystemExit("run `make rootfs` first")
    times: dict[str, list[float]] = {"fresh board": [], "redeploy, new config": [], "redeploy, new bundle": [],
                                     "redeploy, no change": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "key")], check=True)
        other = work / f"{args.bundle.name}-copy"
        shutil.copytree(args.bundle, other)
        for run in range(args.runs):
            board = rootfs.DeviceHost(root, f"bench{run}", work / "key.pub", work / f"bench{run}",
                                      {args.mirror.resolve() / "videos": "/srv/videos"})
            with board:
                (work / "ssh_config").write_text(board.ssh_config(work / "key"))
                port = rootfs.free_port()
                configs = []
                for name in ("a", "b"):
                    path = work / f"{name}.yaml"
                    path.write_text(yaml.safe_dump({"camera": f"cam-{name}", "http": {"port": port},
                                                    "source": {"uri": "/srv/videos/vtest.avi", "loop": True,
                                                               "realtime": True}}))
                    configs.append(str(path))
                common = ["--host", board.name, "--wheelhouse", str(args.wheelhouse)]
                steps = [("fresh board", args.bundle, configs[0], "deployed"),
                         ("redeploy, new config", args.bundle, configs[1], "deployed"),
                         ("redeploy, new bundle", other, configs[1], "deployed"),
                         ("redeploy, no change", other, configs[1], "unchanged")]
                for label, bundle, config, expected in steps:
                    seconds, result = deploy(work / "ssh_config", str(bundle), "--config", config, *common)
                    if result != expected:
                        raise SystemExit(f"{label}: expected {expected}, got {result}")
                    times[label].append(seconds)
                    print(f"run {run + 1} {label}: {seconds:.1f} s", flush=True)
    print(f"\n{machine()}; board: Debian bookworm + systemd in systemd-nspawn on the same CPUs\n")
    print("| step | median s | runs (s) | target |")
    print("|---|---:|---|---|")
    targets = {"fresh board": "≤ 120 s"}
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
              f"{targets.get(label, '≤ 10 s')} |")


if __name__ == "__main__":
    main()
