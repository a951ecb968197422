"""The machine a latency was measured on and the packages installed, named in reports and benchmark tables."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def machine() -> str:
    """A short description of this CPU, e.g. ``AMD EPYC, 2 cores``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def package_version(distribution: str) -> str:
    """Installed version of a pip package (e.g. ``onnxruntime``), or ``not installed``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
