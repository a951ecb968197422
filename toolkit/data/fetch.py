"""Download a bundled dataset's pinned upstream snapshot into the cache, when no mirror holds it.

The tarball of the pinned commit (and any release assets) is fetched, only the record's folder is
extracted (no path may climb out of it), and the parts are placed where the readers expect them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from devices.errors import DataError
from models.hub import MIRROR_ENV, cache_dir

if TYPE_CHECKING:
    from toolkit.data.sets import DatasetRecord


log = logging.getLogger(__name__)


def _safe_relative(name: str, prefix: str) -> str | None:
    """``name`` relative to ``prefix``; None when outside it, empty, absolute or climbing out with ``..``."""
    rel = Path(name)
    if prefix:
        try:
            rel = rel.relative_to(prefix)
        except ValueError:
            return None
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return rel.as_posix()


def _download(url: str, what: str, into: BinaryIO) -> None:
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            shutil.copyfileobj(resp, into)
    except OSError as exc:
        raise DataError(
            f"could not download dataset {what} from {url}: {exc}",
            f"connect to the internet, or set {MIRROR_ENV} to a folder holding the mirrored datasets/",
        ) from exc
    into.seek(0)


def _extract_tar(archive: BinaryIO, prefix: str, dest: Path) -> None:
    """Regular files under ``prefix`` of a codeload tarball (its ``<repo>-<commit>/`` folder dropped)."""
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        for member in tar:
            inner = "/".join(Path(member.name).parts[1:])
            rel = _safe_relative(inner, prefix) if member.isfile() else None
            if rel is None:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(src, out)


def _extract_zip(archive: BinaryIO, dest: Path) -> None:
    """Regular files of a zip archive; links and paths that climb out are skipped."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            rel = None if info.is_dir() or is_link else _safe_relative(info.filename, "")
            if rel is None:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _place_parts(record: DatasetRecord, root: Path) -> None:
    """Move each part's folder to where the record reads it, wherever the archives put it.

    Release archives wrap their folders differently (``object_detection/labels/...`` beside ``images/...``);
    a folder is found by the end of its path, and the content digest checks the result afterwards.
    """
    for part in record.parts:
        for rel in (part.images, part.labels):
            if (root / rel).exists():
                continue
            found = [p for p in root.rglob(Path(rel).name) if p.as_posix().endswith("/" + rel)]
            if len(found) != 1:
                raise DataError(
                    f"dataset {record.name}: the downloaded archives hold {len(found)} folders ending in '{rel}'",
                    f"fetch the set by hand into {MIRROR_ENV}/{record.mirror_path} (layout: {part.images}, "
                    f"{part.labels}) and pass --mirror",
                )
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(found[0], root / rel)


def fetch_snapshot(record: DatasetRecord) -> Path:
    """Download the record's pinned GitHub snapshot (and release assets) and extract it into the cache.

    Not exercised against the network by the test suite (no network in CI); the mirror path is what the
    other tests read, and ``load_dataset`` checks the content digest either way.

    Returns:
        The extracted set root, ``<cache>/datasets/<name>/<commit>``.

    Raises:
        DataError: A download failed, or the archives lack a folder the record reads.
    """
    dest = cache_dir() / "datasets" / record.name / record.upstream.commit
    done = dest / ".complete"
    if done.is_file():
        return dest
    log.info("downloading %s (%s) -> %s", record.name, record.upstream.url, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
    try:
        with tempfile.TemporaryFile() as archive:
            _download(record.upstream.url, record.name, archive)
            _extract_tar(archive, record.upstream.subpath, staging)
        for url in record.assets:
            with tempfile.TemporaryFile() as archive:
                _download(url, record.name, archive)
                _extract_zip(archive, staging)
        _place_parts(record, staging)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
        done.touch()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if record.note:
        log.warning("%s: %s", record.name, record.note)
    return dest
