"""The upstream weights' licence, copied or written into every bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

from devices.errors import ConfigError
from models.hub import resolve


def write_license(folder: Path, arch: str, mirror: str | None = None) -> dict[str, str]:
    """Put the upstream weights' licence in the bundle; returns the manifest's ``license`` record.

    FastestDet's BSD-3-Clause ``LICENSE.md`` is copied from its pinned upstream file (verified by
    sha256). YOLOX-Nano is Apache-2.0 upstream, but the pinned weights come from a copy without a
    licence file, so a notice naming the licence and its upstream URL is written instead.

    Raises:
        ConfigError: An architecture without a known licence.
    """
    if arch == "fastestdet":
        from models.fastestdet import FASTESTDET_COCO as record

        source = resolve(record.license_file, "FastestDet licence", mirror)
        shutil.copyfile(source, folder / "LICENSE.md")
        return {"spdx": record.license, "file": "LICENSE.md", "source": record.license_file.url}
    if arch == "yolox-nano":
        from models.yolox import YOLOX_LICENSE_URL, YOLOX_NANO_COCO

        text = (
            "This model was fine-tuned from the YOLOX-Nano COCO weights of Megvii (YOLOX,\n"
            "https://github.com/Megvii-BaseDetection/YOLOX), which are licensed under the\n"
            "Apache License, Version 2.0. Copyright (c) 2021-2022 Megvii Inc.\n\n"
            f"Full licence text: {YOLOX_LICENSE_URL}\n"
            "(also https://www.apache.org/licenses/LICENSE-2.0)\n\n"
            f"Weights source: {YOLOX_NANO_COCO.file.url} (sha256 {YOLOX_NANO_COCO.file.sha256})\n"
        )
        (folder / "LICENSE").write_text(text, encoding="utf-8")
        return {"spdx": YOLOX_NANO_COCO.license, "file": "LICENSE", "source": YOLOX_LICENSE_URL}
    raise ConfigError(
        f"no licence record for architecture '{arch}'",
        "add its upstream licence to toolkit.export.licence.write_license",
    )
