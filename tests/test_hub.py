"""Pretrained files are verified before use; a mirror serves them offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from devices.errors import ModelFileError
from models.hub import RemoteFile, resolve


def _remote(tmp_path: Path, data: bytes) -> RemoteFile:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.bin").write_bytes(data)
    return RemoteFile("https://example.invalid/model.bin", hashlib.sha256(data).hexdigest(), "w/model.bin")


def test_mirror_serves_verified_file(tmp_path: Path) -> None:
    remote = _remote(tmp_path, b"weights" * 100)
    assert resolve(remote, "test weights", mirror=tmp_path) == (tmp_path / "w" / "model.bin").resolve()


def test_truncated_file_is_refused_with_hash_and_fix(tmp_path: Path) -> None:
    remote = _remote(tmp_path, b"weights" * 100)
    path = tmp_path / "w" / "model.bin"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ModelFileError, match="expected " + remote.sha256) as err:
        resolve(remote, "test weights", mirror=tmp_path)
    assert "truncated" in str(err.value) and "fix:" in str(err.value)


def test_missing_file_in_mirror_names_the_path(tmp_path: Path) -> None:
    remote = RemoteFile("https://example.invalid/x", "0" * 64, "nowhere/x.onnx")
    with pytest.raises(ModelFileError, match=r"nowhere/x\.onnx"):
        resolve(remote, "test weights", mirror=tmp_path)
