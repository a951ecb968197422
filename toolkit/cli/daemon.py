"""Device commands: ``edgesight run`` (the camera-loop daemon) and ``edgesight config check|schema``.

Nothing here imports torch; the daemon's modules are imported inside the commands.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from devices.errors import ConfigError
from toolkit.cli.base import cli

EXIT_CODES_HELP = (
    "Exit codes: 0 stopped (SIGTERM/SIGINT) or the file ended at its last frame, sinks flushed; "
    "1 internal error; 2 refused to start (config, bundle, source or port: the message says how to fix it); "
    "3 the file ended early (truncated or damaged); 4 the detector failed."
)


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML config (see `edgesight config schema`); the flags below override it.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle folder written by `edgesight export`.")
@click.option("--source", help="Video file, image folder, v4l2:///dev/video0 or camera index, rtsp://..., "
              "http(s)://..., csi://0, or a GStreamer pipeline ending in appsink.")
@click.option("--loop", is_flag=True, default=None, help="File sources: start again at the end instead of exiting.")
@click.option("--mqtt", metavar="HOST:PORT", help="Publish events to this MQTT broker.")
@click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), help="Append events to this JSONL file.")
@click.option("--http", "http_addr", metavar="HOST:PORT",
              help="Serve /metrics, /healthz and /api/status here (default 127.0.0.1:8080).")
@click.option("--threads", type=int, help="Runtime threads of each worker (default: every core).")
@click.option("--workers", type=int, help="Copies of the model run side by side on successive frames (default 1).")
@click.option("--camera", help="This camera's name in events and MQTT topics.")
@click.pass_context
def run(ctx: click.Context, config_file: Path | None, **flags: Any) -> None:
    """Run a bundle on a camera, stream or file: detections, events, metrics."""
    from devices.daemon.config import load_config
    from devices.daemon.service import run_daemon

    daemon_logging()
    cfg = load_config(config_file, run_overrides(**flags))
    _exit_now(int(run_daemon(cfg)))


def run_overrides(bundle: Path | None = None, source: str | None = None, loop: bool | None = None,
                  mqtt: str | None = None, jsonl: Path | None = None, http_addr: str | None = None,
                  threads: int | None = None, workers: int | None = None,
                  camera: str | None = None) -> dict[str, Any]:
    """The flags of ``edgesight run`` as config fields (only those given)."""
    fields: dict[str, Any] = {}
    if bundle is not None:
        fields["bundle"] = str(bundle)
    if source is not None or loop is not None:
        fields["source"] = {k: v for k, v in (("uri", source), ("loop", loop)) if v is not None}
    if mqtt is not None:
        host, port = parse_host_port(mqtt, "--mqtt", 1883)
        fields.setdefault("sinks", {})["mqtt"] = {"host": host, "port": port}
    if jsonl is not None:
        fields.setdefault("sinks", {})["jsonl"] = {"path": str(jsonl)}
    if http_addr is not None:
        host, port = parse_host_port(http_addr, "--http", 8080)
        fields["http"] = {"host": host, "port": port}
    if threads is not None:
        fields["threads"] = threads
    if workers is not None:
        fields["workers"] = workers
    if camera is not None:
        fields["camera"] = camera
    return fields


def parse_host_port(text: str, flag: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[::1]:port`` -> (host, port).

    Raises:
        ConfigError: Naming the flag and the value.
    """
    host, sep, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {text!r} is not HOST:PORT", f"write e.g. {flag} 127.0.0.1:{default_port}")
    return host, int(port)


def _exit_now(code: int) -> None:
    """End the process at once: the sinks are flushed (or their events spooled) and the logs written.

    The interpreter's own teardown (C extensions' destructors, a sink thread still blocked in a hung webhook
    POST) took up to 0.8 s on the loaded workstation, and SIGTERM must end the daemon within 2 s.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def daemon_logging() -> None:
    # A service logs what it does at INFO (the journal keeps it); -v/-vv on the group go further.
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


@cli.group()
def config() -> None:
    """Check a daemon config file, or print its JSON schema."""


@config.command("check")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(config_file: Path) -> None:
    """Validate a YAML config: every invalid field is named with its value and the fix."""
    from devices.daemon.config import load_config

    cfg = load_config(config_file)
    click.echo(f"{config_file}: valid (camera {cfg.camera!r}, bundle {cfg.bundle}, source {cfg.source.uri})")


@config.command("schema")
@click.option("--markdown", is_flag=True, help="Print a reference table per section instead (docs/daemon.md).")
def config_schema(markdown: bool) -> None:
    """Print the config's JSON schema (for editors: yaml-language-server, VS Code)."""
    from devices.daemon.config import DaemonConfig, reference_markdown

    click.echo(reference_markdown() if markdown else json.dumps(DaemonConfig.model_json_schema(), indent=2))
