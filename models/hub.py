"""Where pretrained files come from: the upstream URL on a connected machine, or a local mirror.

Code paths are identical either way: ``resolve`` returns a verified local path. The mirror is chosen
explicitly (``EDGESIGHT_MIRROR`` or a ``--mirror`` flag) and holds the same files under the same
relative paths as ``../shared`` in this repository's development setup.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devices.bundle import file_sha256
from devices.errors import ModelFileError

log = logging.getLogger(__name__)

MIRROR_ENV = "EDGESIGHT_MIRROR"
CACHE_ENV = "EDGESIGHT_CACHE"


@dataclass(frozen=True)
class RemoteFile:
    """One upstream file: where it lives, its hash, and where a mirror keeps it.

    Attributes:
        url: Canonical download URL (pinned to a commit or release).
        sha256: Hex digest of the file as mirrored; verified before every use.
        mirror_path: Path of the same file relative to a mirror root.
    """

    url: str
    sha256: str
    mirror_path: str


def mirror_root(mirror: str | os.PathLike | None = None) -> Path | None:
    """The mirror root chosen by argument or ``EDGESIGHT_MIRROR``, or None to download upstream."""
    root = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    return Path(root).expanduser().resolve() if root else None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "edgesight")).expanduser()


def verify(path: Path, sha256: str, what: str) -> Path:
    """Check a file's sha256; raise ModelFileError naming the file and the fix on mismatch."""
    if not path.is_file():
        raise ModelFileError(f"{what}: file not found: {path}", "check the path or the mirror root")
    actual = file_sha256(path)
    if actual != sha256:
        raise ModelFileError(
            f"{what}: {path} has sha256 {actual}, expected {sha256} "
            f"({path.stat().st_size} bytes; the file is truncated, corrupt or a different version)",
            "delete it and fetch it again, or point the mirror at an unmodified copy",
        )
    return path


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, dest)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, tmp)
        except OSError as exc:
            Path(tmp.name).unlink(missing_ok=True)
            raise ModelFileError(
                f"could not download {url}: {exc}",
                f"connect to the internet, or set {MIRROR_ENV} to a folder that holds the files",
            ) from exc
    os.replace(tmp.name, dest)


def resolve(remote: RemoteFile, what: str, mirror: str | os.PathLike | None = None) -> Path:
    """Return a verified local path for ``remote``: from the mirror if one is set, else the cache.

    Args:
        remote: The file's upstream record.
        what: Human name used in errors (for example ``yolox-nano weights``).
        mirror: Mirror root; defaults to ``EDGESIGHT_MIRROR``.
    """
    root = mirror_root(mirror)
    if root is not None:
        path = root / remote.mirror_path
        if not path.is_file():
            raise ModelFileError(
                f"{what}: not in the mirror at {path}",
                f"point {MIRROR_ENV} (or --mirror) at the folder that holds {remote.mirror_path}",
            )
        return verify(path, remote.sha256, what)
    path = cache_dir() / "files" / remote.sha256[:16] / Path(remote.mirror_path).name
    if not path.is_file():
        _download(remote.url, path)
    return verify(path, remote.sha256, what)
