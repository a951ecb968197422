"""Wheelhouses: every wheel of the device install for one board, so that a board without internet installs.

``edgesight wheelhouse --target rpi --out wheels/`` builds this project's wheel and has pip download the
wheels of ``edgesight[device,<runtime>]`` for the board's platform (``--platform``, ``--python-version``,
``--only-binary``: nothing is compiled, nothing is chosen for this workstation's CPU). ``wheelhouse.json``
records what it holds; ``edgesight deploy --wheelhouse wheels/`` installs from it with no index, and a user
can do the same by hand: ``pip install --no-index --find-links wheels/ 'edgesight[device,tflite]'``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devices.bundle import file_sha256
from devices.errors import ConfigError, EdgesightError
from toolkit.deploy.profiles import Platform, Profile, Runtime

log = logging.getLogger(__name__)

WHEELHOUSE_FILE = "wheelhouse.json"
PROJECT = "edgesight"
#: The source tree this toolkit runs from (None for an installed wheel, which cannot rebuild itself).
SOURCE_TREE = Path(__file__).resolve().parents[2]
SOURCE_PARTS = ("toolkit", "devices", "models", "calibration", "setup.cfg", "pyproject.toml", "README.md")
_WHEEL_CACHE = Path.home() / ".cache" / "edgesight" / "project-wheels"


class WheelhouseError(EdgesightError):
    """A wheelhouse cannot be built, or does not fit the board."""


@dataclass(frozen=True)
class Wheelhouse:
    """A folder of wheels for one board.

    Attributes:
        folder: Where the wheels are.
        target: The profile it was built for.
        runtime: The runtime it holds.
        platform: The userspace the wheels fit.
        requirements: What ``pip install`` is given (``edgesight[...]`` and pinned extras).
        files: Wheel file name -> sha256.
    """

    folder: Path
    target: str
    runtime: str
    platform: Platform
    requirements: tuple[str, ...]
    files: dict[str, str]

    @property
    def dependencies(self) -> dict[str, str]:
        """Every wheel but this project's own (deploy ships the workstation's current one)."""
        return {name: sha for name, sha in self.files.items() if not name.startswith(f"{PROJECT}-")}

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "runtime": self.runtime,
            "platform": {"arch": self.platform.arch, "python": self.platform.python, "glibc": self.platform.glibc},
            "requirements": list(self.requirements),
            "files": self.files,
        }

    @classmethod
    def load(cls, folder: str | Path) -> Wheelhouse:
        """Read ``wheelhouse.json`` and check that every wheel it lists is there, unchanged.

        Raises:
            WheelhouseError: The folder is not a wheelhouse, or a wheel is missing or altered.
        """
        folder = Path(folder)
        index = folder / WHEELHOUSE_FILE
        if not index.is_file():
            raise WheelhouseError(
                f"{folder} is not a wheelhouse (no {WHEELHOUSE_FILE})",
                "build one with `edgesight wheelhouse --target rpi --out wheels/`",
            )
        data = json.loads(index.read_text())
        files = dict(data["files"])
        for name, sha in files.items():
            path = folder / name
            if not path.is_file() or file_sha256(path) != sha:
                raise WheelhouseError(
                    f"wheel {path} is missing or differs from {index}",
                    "rebuild the wheelhouse with `edgesight wheelhouse` (or copy the whole folder again)",
                )
        return cls(folder, data["target"], data["runtime"], Platform(**data["platform"]),
                   tuple(data["requirements"]), files)

    def check_fits(self, platform: Platform) -> None:
        """Refuse a wheelhouse built for another board before anything is copied."""
        if (self.platform.arch, self.platform.python) != (platform.arch, platform.python):
            raise WheelhouseError(
                f"wheelhouse {self.folder} holds wheels for {self.platform.describe()}, but the board runs "
                f"{platform.describe()}",
                f"build one for the board: edgesight wheelhouse --target {self.target} --arch {platform.arch} "
                f"--python {platform.python} --out DIR",
            )


def requirements(runtime: Runtime, project: str = PROJECT) -> tuple[str, ...]:
    """``pip install`` arguments of the device install with ``runtime`` (``project`` may be a wheel path)."""
    return (f"{project}[{','.join(runtime.extras)}]", *runtime.requirements)


def source_digest(tree: Path) -> str:
    """sha256 of every file the wheel is built from: the code and its package data (the live page's HTML, CSS
    and JavaScript), so that a change to any of them builds a new wheel."""
    digest = hashlib.sha256()
    for part in SOURCE_PARTS:
        root = tree / part
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def project_wheel() -> Path:
    """This project's wheel, built from the source tree once per change of its source (cached).

    Raises:
        WheelhouseError: This edgesight is an installed wheel, not a source tree.
    """
    if not (SOURCE_TREE / "setup.cfg").is_file():
        raise WheelhouseError(
            f"edgesight runs from {SOURCE_TREE}, not from a source tree, so it cannot build its own wheel",
            "run the command from a clone of the edgesight repository (pip install -e .)",
        )
    cached = _WHEEL_CACHE / source_digest(SOURCE_TREE)[:16]
    wheels = sorted(cached.glob(f"{PROJECT}-*.whl"))
    if wheels:
        return wheels[0]
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    with tempfile.TemporaryDirectory() as tmp:
        for part in SOURCE_PARTS:
            src = SOURCE_TREE / part
            if src.is_dir():
                shutil.copytree(src, Path(tmp) / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, Path(tmp) / part)
        out = Path(tmp) / "dist"
        _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(out), tmp)
        cached.mkdir(parents=True, exist_ok=True)
        built = next(out.glob(f"{PROJECT}-*.whl"))
        shutil.copy2(built, cached / built.name)
    log.info("built %s", cached / built.name)
    return cached / built.name


def build_wheelhouse(profile: Profile, out: str | Path, runtime: str | None = None) -> Wheelhouse:
    """Download every wheel of the device install for ``profile``'s board into ``out``.

    Args:
        profile: The board (its ``platform`` decides the wheels; ``Profile.with_platform`` changes it).
        out: The wheelhouse folder (created; wheels already there are kept and reused by pip).
        runtime: The runtime to include (None: the profile's default).

    Returns:
        The wheelhouse, with ``wheelhouse.json`` written.

    Raises:
        WheelhouseError: pip found no binary wheel of a requirement for this platform.
    """
    chosen = profile.runtime(runtime)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{PROJECT}-*.whl"):
        old.unlink()
    wheel = shutil.copy2(project_wheel(), out)
    platform = profile.platform
    args = ["download", "--only-binary=:all:", "--dest", str(out), "--python-version", platform.python,
            "--implementation", "cp", "--abi", platform.abi, "--abi", "abi3", "--abi", "none"]
    for tag in platform.pip_platforms():
        args += ["--platform", tag]
    try:
        _pip(*args, *requirements(chosen, project=str(wheel)))
    except subprocess.CalledProcessError as exc:
        raise WheelhouseError(
            f"pip found no complete set of binary wheels for {platform.describe()}: {_last_lines(exc.stderr)}",
            "check the package index is reachable, or choose another --runtime / --python",
        ) from exc
    files = {path.name: file_sha256(path) for path in sorted(out.glob("*.whl"))}
    house = Wheelhouse(out, profile.name, chosen.name, platform, requirements(chosen), files)
    (out / WHEELHOUSE_FILE).write_text(json.dumps(house.to_dict(), indent=2) + "\n")
    return house


def _pip(*args: str) -> subprocess.CompletedProcess:
    log.debug("pip %s", " ".join(args))
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True, text=True)


def _last_lines(text: str, count: int = 4) -> str:
    return " | ".join(line.strip() for line in (text or "").strip().splitlines()[-count:])


def check_runtime_format(runtime: Runtime, bundle_format: str) -> None:
    """A TFLite bundle needs a TFLite runtime, an ONNX bundle ONNX Runtime."""
    if bundle_format not in runtime.formats:
        raise ConfigError(
            f"runtime {runtime.name} cannot run a {bundle_format} bundle",
            "export the bundle in the format of the target's runtime (rpi: tflite, jetson: onnx), or pick "
            "another --runtime",
        )
