"""What a video file says about itself: the ``<name>.about.json`` written beside a composed clip.

The live page shows a source's description next to the video, so that a composed clip (``toolkit.clips``:
a pan and zoom over still photos) is never mistaken for camera footage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ``clip.mp4`` is described by ``clip.about.json``.
SIDECAR_SUFFIX = ".about.json"


def read_about(uri: str) -> dict[str, Any] | None:
    """The sidecar of a file source, or None for other sources and files without one.

    A sidecar that cannot be read is logged and ignored: it describes the video, it never stops it.
    """
    path = Path(uri)
    about = path.with_name(path.stem + SIDECAR_SUFFIX)
    try:
        if not about.is_file():
            return None
        data = json.loads(about.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", about, exc)
        return None
    return data if isinstance(data, dict) else None
