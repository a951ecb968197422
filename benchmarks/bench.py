"""Benchmark exported bundles against the stock peers and HOG: ``python benchmarks/bench.py BUNDLE... [options]``.

A thin wrapper over ``toolkit.evaluate.bench.bench`` through the ``edgesight bench`` command; the options are the
same (``--peers``, ``--threads 1,2,4``, ``--coco``/``--images``, ``--frames``, ``--out``). The mirror comes
from ``EDGESIGHT_MIRROR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench", *sys.argv[1:]]
    main()
