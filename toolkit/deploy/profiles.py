"""Deployment targets as profiles: the board's userspace, its runtime, its camera and its unit limits.

A profile is data. ``edgesight wheelhouse --target T`` reads its ``Platform`` to download the right wheels,
``edgesight deploy --target T`` reads the rest to fill what the user's camera.yaml leaves open and to write
the systemd unit. Everything a profile sets is a default: the user's config and the inventory win.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from devices.errors import ConfigError


@dataclass(frozen=True)
class Platform:
    """The userspace that wheels must fit.

    Attributes:
        arch: ``uname -m`` of the board (``aarch64``, ``x86_64``).
        python: ``major.minor`` of the board's system Python, which the venv is made from.
        glibc: The board's glibc, the newest ``manylinux_2_X`` tag its pip accepts.
    """

    arch: str
    python: str
    glibc: str

    @property
    def abi(self) -> str:
        """CPython ABI tag, e.g. ``cp311``."""
        return "cp" + self.python.replace(".", "")

    def pip_platforms(self) -> list[str]:
        """Every platform tag pip on the board accepts (``pip download --platform`` matches them literally)."""
        newest = int(self.glibc.split(".")[1])
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(newest, 4, -1)]
        # Older wheels carry only the legacy aliases of manylinux_2_17 / 2_12 / 2_5.
        legacy = ["manylinux2014"] + (["manylinux2010", "manylinux1"] if self.arch == "x86_64" else [])
        return tags + [f"{alias}_{self.arch}" for alias in legacy]

    def describe(self) -> str:
        return f"{self.arch}, Python {self.python}, glibc {self.glibc}"


@dataclass(frozen=True)
class Runtime:
    """How a runtime is installed: the extras of edgesight and any further pinned requirements."""

    name: str
    extras: tuple[str, ...]
    requirements: tuple[str, ...] = ()
    formats: tuple[str, ...] = ("tflite",)


#: The runtimes a device install can hold, by the name the daemon config uses (``runtime:``).
RUNTIMES: dict[str, Runtime] = {
    "ai_edge_litert": Runtime("ai_edge_litert", ("device", "tflite")),
    # The last tflite-runtime (2.14) was built against numpy 1.x and crashes with numpy 2.
    "tflite_runtime": Runtime("tflite_runtime", ("device",), ("tflite-runtime==2.14.0", "numpy<2")),
    "onnxruntime": Runtime("onnxruntime", ("device", "onnx"), formats=("onnx",)),
}


@dataclass(frozen=True)
class Profile:
    """One kind of board.

    Attributes:
        name: What ``--target`` takes.
        title: The boards it covers.
        platform: Userspace of the board's stock OS (wheels are downloaded for it).
        runtimes: Runtimes that fit, the default first.
        source: Camera URI used when the config names none.
        threads_from_cores: Set ``threads`` to the board's core count (shared between the ``workers``) when the
            config leaves it open.
        device_allow: ``DeviceAllow=`` lines: the camera (and accelerator) device groups the unit may open.
        groups: Supplementary groups of the service user (cameras are group ``video``).
        memory_max: ``MemoryMax=`` of the unit.
        environment: ``Environment=`` lines of the unit.
        state_dirs: Folders under the state directory that the unit may write besides spool and snapshots.
    """

    name: str
    title: str
    platform: Platform
    runtimes: tuple[str, ...]
    source: str
    threads_from_cores: bool
    device_allow: tuple[str, ...]
    groups: tuple[str, ...]
    memory_max: str
    environment: tuple[str, ...] = ()
    state_dirs: tuple[str, ...] = ()

    def runtime(self, name: str | None) -> Runtime:
        """The runtime ``name`` (None: the profile's default), refused when the board cannot use it."""
        chosen = name or self.runtimes[0]
        if chosen not in self.runtimes:
            raise ConfigError(
                f"runtime {chosen!r} is not offered for target {self.name!r} ({self.title})",
                f"use one of {list(self.runtimes)}",
            )
        return RUNTIMES[chosen]

    def with_platform(self, arch: str | None = None, python: str | None = None, glibc: str | None = None) -> Profile:
        """The same profile for another userspace (an OS release with another Python, or an x86 stand-in)."""
        platform = replace(
            self.platform,
            **{k: v for k, v in {"arch": arch, "python": python, "glibc": glibc}.items() if v is not None},
        )
        return replace(self, platform=platform)


# Cameras: V4L2 nodes (USB webcams, the Pi's unicam/rp1-cfe) are group "video4linux"; libcamera on a Pi also
# opens the media controller and DMA heaps, and the legacy firmware camera /dev/vchiq.
_CAMERAS = ("char-video4linux rw", "char-media rw", "/dev/dma_heap/system rw", "/dev/dma_heap/linux,cma rw")

PROFILES: dict[str, Profile] = {
    "rpi": Profile(
        name="rpi",
        title="Raspberry Pi 4 / 5 on Raspberry Pi OS bookworm (64-bit)",
        platform=Platform("aarch64", "3.11", "2.36"),
        runtimes=("ai_edge_litert", "tflite_runtime"),
        source="csi://0",
        threads_from_cores=True,
        device_allow=(*_CAMERAS, "/dev/vchiq rw"),
        groups=("video",),
        memory_max="768M",
    ),
    "jetson": Profile(
        name="jetson",
        title="NVIDIA Jetson Orin / Xavier on JetPack 6 (L4T r36, Ubuntu 22.04)",
        platform=Platform("aarch64", "3.10", "2.35"),
        runtimes=("onnxruntime",),
        source="csi://0",
        threads_from_cores=False,
        # The GPU is reached through the nvhost/nvmap/nvgpu character devices; nvargus (CSI cameras) through
        # its own socket, which needs no device line.
        device_allow=(*_CAMERAS, "char-nvhost* rw", "char-nvmap rw", "char-nvgpu* rw", "char-nvidia* rw"),
        groups=("video", "render"),
        memory_max="2G",
        # TensorRT builds an engine at the first start (minutes) and reuses it from disk after that.
        environment=("EDGESIGHT_TRT_CACHE=/var/lib/edgesight/trt-cache",),
        state_dirs=("trt-cache",),
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; a clear error naming the ones that exist."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}", f"use one of {list(PROFILES)}") from None
