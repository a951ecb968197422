"""Debian root filesystems for the proofs without a board: ``python -m tests.rootfs [arm64|device]``.

- ``arm64``: Debian bookworm for arm64 (the userspace of Raspberry Pi OS bookworm: Python 3.11, glibc
  2.36), whose binaries run under ``qemu-aarch64-static`` through binfmt_misc. Commands run in it with
  ``chroot`` inside a private mount namespace (``unshare -m``), so the bind mounts end with the command.
- ``device``: Debian bookworm for this machine's CPU with systemd, sshd, sudo and a ``pi`` login with
  passwordless sudo, booted by ``systemd-nspawn`` as a second host that ``edgesight deploy`` reaches over
  SSH: real systemd (Type=notify, watchdog, sandboxing), real sshd, real journald.

Both are built once by debootstrap from Debian's packages (network: run by ``make rootfs``, not by the
tests) and cached outside the clone in ``~/.cache/edgesight/rootfs/<name>-<key>``, where the key hashes
everything that goes in (suite, architecture, packages, set-up script), so CI reuses them until the
recipe changes. A build goes to a temporary folder first and is renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
DEBIAN = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("EDGESIGHT_ROOTFS_CACHE", Path.home() / ".cache" / "edgesight" / "rootfs"))
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")

# The device host: a Raspberry-Pi-OS-like login ("pi", passwordless sudo, group video), sshd without
# passwords, and none of the timers that would wake up during a test.
_DEVICE_SETUP = """
set -e
useradd --create-home --shell /bin/bash --groups sudo,video pi
echo 'pi ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/010_pi-nopasswd
chmod 0440 /etc/sudoers.d/010_pi-nopasswd
install -d -m 700 -o pi -g pi /home/pi/.ssh
printf 'PasswordAuthentication no\\nKbdInteractiveAuthentication no\\nUseDNS no\\n' \\
    > /etc/ssh/sshd_config.d/10-keys-only.conf
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer dpkg-db-backup.timer \
    systemd-tmpfiles-clean.timer console-getty.service getty@tty1.service
echo edgesight-device > /etc/hostname
"""


@dataclass(frozen=True)
class Recipe:
    """What one root filesystem holds."""

    name: str
    arch: str
    packages: tuple[str, ...]
    setup: str = ""

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps([SUITE, self.arch, self.packages, self.setup]).encode()).hexdigest()[:12]

    @property
    def path(self) -> Path:
        return CACHE / f"{self.name}-{self.key}"


ARM64 = Recipe("arm64", "arm64", ("python3", "python3-venv"))
DEVICE = Recipe("device", "amd64", ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv",
                                    "rsync", "sudo", "curl", "iproute2"), _DEVICE_SETUP)
RECIPES = {"arm64": ARM64, "device": DEVICE}


def cached(recipe: Recipe) -> Path | None:
    """The built root filesystem, or None."""
    return recipe.path if (recipe.path / ".complete").is_file() else None


def build(recipe: Recipe) -> Path:
    """Build (or reuse) the root filesystem; prints how long a cold build took."""
    if cached(recipe):
        return recipe.path
    if recipe.arch == "arm64":
        ensure_qemu_binfmt()
    CACHE.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f"{recipe.name}-", dir=CACHE))
    started = time.monotonic()
    subprocess.run(["debootstrap", f"--arch={recipe.arch}", "--variant=minbase",
                    f"--include={','.join(recipe.packages)}", SUITE, str(temp), DEBIAN], check=True)
    if recipe.setup:
        subprocess.run(["chroot", str(temp), "/bin/sh", "-c", recipe.setup], check=True)
    shutil.rmtree(temp / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (temp / ".complete").write_text(json.dumps({"seconds": time.monotonic() - started, "recipe": recipe.__dict__}))
    os.replace(temp, recipe.path)
    print(f"built {recipe.path} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return recipe.path


# --- arm64 under qemu ---------------------------------------------------------------------------------------


def ensure_qemu_binfmt() -> None:
    """Register qemu-aarch64-static with binfmt_misc (what systemd-binfmt does at boot), once per kernel.

    Debian's registration carries the F flag: the kernel opens the interpreter now, so it needs no copy
    inside the chroot.

    Raises:
        RuntimeError: binfmt_misc cannot be mounted or written here (no privilege), with what to do.
    """
    if (BINFMT / "qemu-aarch64").is_file():
        return
    if not (BINFMT / "register").exists():
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"binfmt_misc cannot be mounted at {BINFMT}: {proc.stderr.strip()} "
                               "(run as root, or register qemu-aarch64 on the host: update-binfmts --enable)")
    line = QEMU_BINFMT_CONF.read_text().strip()
    try:
        (BINFMT / "register").write_text(line)
    except FileExistsError:
        pass  # registered by a concurrent caller


def chroot_run(root: Path, argv: list[str], work: Path, timeout: float = 1800,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``root`` with ``work`` mounted at /mnt; returns the finished process.

    The environment is clean (no pip settings of this machine leak in); ``QEMU_CPU`` in ``env`` picks the
    emulated CPU (``cortex-a72`` for a Pi 4, ``cortex-a76`` for a Pi 5).
    """
    ensure_qemu_binfmt()
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="edgesight-sys-") as sys_dir:
        # XNNPACK's CPU detection (cpuinfo) reads the CPU lists from /sys: without them it gives up and the
        # runtime uses TFLite's own kernels instead of XNNPACK's (other numbers than a Pi computes); with the
        # host's /sys it reads x86 topology and crashes. So /sys holds just the lists; the CPU features come
        # from the auxiliary vector, which qemu fills for the emulated CPU.
        cpus = Path(sys_dir) / "devices" / "system" / "cpu"
        cpus.mkdir(parents=True)
        for name in ("possible", "present", "online"):
            (cpus / name).write_text(f"0-{(os.cpu_count() or 1) - 1}\n")
        inner = " && ".join([
            f"mount --bind {work} {root}/mnt",
            f"mount -t proc proc {root}/proc",
            f"mount --bind {sys_dir} {root}/sys",
            f"mount --rbind /dev {root}/dev",
            "exec " + shlex.join(["chroot", str(root), "env", "-i", *(f"{k}={v}" for k, v in clean.items()), *argv]),
        ])
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                              capture_output=True, text=True, timeout=timeout, check=False)


# --- the device host: systemd + sshd in a container ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DeviceHost:
    """A booted ``device`` root filesystem with sshd on a loopback port; a context manager.

    The container shares this machine's network (so sshd and the daemon listen on 127.0.0.1, on ports
    of their own) and writes to a throw-away overlay (``--volatile=overlay``): every host starts as a
    fresh board and leaves nothing behind.

    Args:
        root: The ``device`` root filesystem.
        name: Container and SSH alias name.
        public_key: The key that may log in as ``pi``.
        work: A folder for this host's files.
        binds: Host folders shown read-only in the container (host path -> container path).
    """

    def __init__(self, root: Path, name: str, public_key: Path, work: Path,
                 binds: dict[Path, str] | None = None) -> None:
        self.root, self.name, self.work = root, name, work
        self.binds = binds or {}
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        (work / "sshd.conf").write_text(f"Port {self.port}\nListenAddress 127.0.0.1\n")
        self._keys = work / "authorized_keys"
        shutil.copy(public_key, self._keys)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> DeviceHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> None:
        log = (self.work / "console.log").open("w")
        self._proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.root}", "--volatile=overlay",
             "--register=no", "--keep-unit", f"--machine={self.name}", f"--hostname={self.name}",
             f"--bind-ro={self.work / 'sshd.conf'}:/etc/ssh/sshd_config.d/20-port.conf",
             f"--bind-ro={self._keys}:/home/pi/.ssh/authorized_keys",
             *(f"--bind-ro={host}:{guest}" for host, guest in self.binds.items())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"container {self.name} exited: {(self.work / 'console.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"sshd of {self.name} did not come up within {timeout:.0f} s")

    def stop(self) -> None:
        """Power the container off (SIGTERM makes nspawn shut systemd down); kill it if it hangs."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def ssh_config(self, identity: Path, alias: str | None = None) -> str:
        """An ssh_config entry that reaches this host as ``pi``."""
        return (f"Host {alias or self.name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User pi\n"
                f"  IdentityFile {identity}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
                "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")


def main(names: list[str]) -> None:
    for name in names or list(RECIPES):
        path = build(RECIPES[name])
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
