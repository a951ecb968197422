"""The ``edgesight`` command line. Each command is a thin wrapper over one library function.

``base`` holds the group and ``main``; each module in ``COMMAND_MODULES`` adds its commands to it.
"""

from __future__ import annotations

import importlib

from toolkit.cli.base import cli, main

#: Modules that register commands on ``cli``, in the order ``edgesight --help`` lists them.
COMMAND_MODULES = ("data", "train", "evaluate", "export", "daemon", "deploy", "demo")

for _name in COMMAND_MODULES:
    importlib.import_module(f"toolkit.cli.{_name}")

__all__ = ["cli", "main"]
