"""The upstream weights' licence, copied or written into every bundle, from the model's registry entry."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

from devices.errors import ConfigError
from models.hub import resolve
from models.registry import list_models, model_entry


def write_license(folder: Path, arch: str, mirror: str | None = None) -> dict[str, str]:
    """Put the upstream weights' licence in the bundle; returns the manifest's ``license`` record.

    A pinned licence file (``PretrainedWeights.license_file``, verified by sha256) is copied under its
    upstream name. Weights pinned from a copy without a licence file (YOLOX-Nano) ship their record's
    ``license_notice`` as ``LICENSE`` instead, naming the licence, its upstream URL and the weights' source.

    Raises:
        ConfigError: An unregistered architecture, or one whose weights record has neither a licence file
            nor a notice.
    """
    if arch not in list_models():
        raise ConfigError(
            f"no licence record for architecture '{arch}': it is not registered",
            f"register it in models/ with its pretrained weights' licence (known: {', '.join(list_models())})",
        )
    weights = model_entry(arch).weights
    if weights.license_file is not None:
        name = PurePosixPath(weights.license_file.mirror_path).name
        shutil.copyfile(resolve(weights.license_file, f"{weights.name} licence", mirror), folder / name)
        return {"spdx": weights.license, "file": name, "source": weights.license_file.url}
    if weights.license_notice:
        source = f"Weights source: {weights.file.url} (sha256 {weights.file.sha256})\n"
        (folder / "LICENSE").write_text(f"{weights.license_notice}\n{source}", encoding="utf-8")
        return {"spdx": weights.license, "file": "LICENSE", "source": weights.license_url}
    raise ConfigError(
        f"no licence record for architecture '{arch}'",
        f"give {weights.name} a license_file or a license_notice in its PretrainedWeights (models/)",
    )
