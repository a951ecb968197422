"""``edgesight demo`` (the daemon with its live page) and ``edgesight demo-clip`` (the composed stop-sign clip).

``demo`` is a device command: nothing here imports torch, and the daemon's modules are imported inside it.
"""

from __future__ import annotations

import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

import click

from toolkit.cli.base import cli
from toolkit.cli.daemon import EXIT_CODES_HELP, daemon_logging, run_overrides


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--source", default="0", show_default=True,
              help="Camera index, video file, image folder, v4l2:///dev/video0, rtsp://..., http(s)://..., csi://0.")
@click.option("--bundle", type=click.Path(path_type=Path),
              help="Bundle folder (default: the one with the highest AP in its manifest under ./bundles).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Daemon YAML config (zones, line, sinks, ...); the flags override it.")
@click.option("--http", "http_addr", metavar="HOST:PORT", help="Serve the page here (default 127.0.0.1:8080).")
@click.option("--window", is_flag=True, help="Show an OpenCV window (needs a display and an OpenCV with a GUI).")
@click.option("--browser/--no-browser", default=True, show_default=True, help="Open the page in a browser.")
@click.option("--record", type=click.Path(file_okay=False, path_type=Path),
              help="Record the run here: annotated.mp4, events.jsonl, metrics.prom, status.json, SUMMARY.md.")
@click.option("--realtime/--no-realtime", default=None,
              help="Files: play at the file's frame rate, dropping what the detector cannot keep up with "
                   "(default), or process every frame as fast as possible (default with --record).")
@click.option("--once", is_flag=True, help="Files: stop at the end (default with --record) instead of looping.")
@click.option("--threads", type=int, help="Runtime threads (default: every core).")
def demo(source: str, bundle: Path | None, config_file: Path | None, http_addr: str | None, window: bool,
         browser: bool, record: Path | None, realtime: bool | None, once: bool, threads: int | None) -> None:
    """Watch the detector work: the daemon on a camera or a video, with its live page (or a window)."""
    from devices.daemon.config import load_config, read_yaml
    from devices.daemon.demo import Recorder, find_bundle, prepare_recording, run_demo

    daemon_logging()
    if bundle is None and not (config_file and read_yaml(config_file).get("bundle")):
        bundle = find_bundle()
    file_once = once or record is not None
    fields: dict[str, Any] = run_overrides(bundle=bundle, source=source, loop=not file_once, http_addr=http_addr,
                                           threads=threads)
    fields["source"]["realtime"] = (record is None) if realtime is None else realtime
    if record is not None:
        prepare_recording(record)
        # The recording keeps its own spool: events left over from another run must not land in its JSONL.
        fields.setdefault("sinks", {})["jsonl"] = {"path": str(record / Recorder.EVENTS)}
        fields.setdefault("events", {}).update(spool=str(record / "spool.sqlite"), snapshots=str(record / "snapshots"))
    cfg = load_config(config_file, fields)

    def ready(daemon: Any) -> None:
        if daemon.http is None:
            return
        url = daemon.http.url + "/"
        click.echo(f"live page: {url}  (Ctrl-C stops the daemon)")
        if browser and not window and _has_display():
            webbrowser.open(url)

    code = run_demo(cfg, record=record, window=window, on_ready=ready)
    if record is not None:
        click.echo(f"recorded: {record}/SUMMARY.md")
    sys.exit(int(code))


def _has_display() -> bool:
    # Without a display Python's webbrowser falls back to text browsers (lynx, w3m), which would take over the
    # terminal the daemon logs to: then only the address is printed.
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@cli.command("demo-clip")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("runs/demo/stop-signs.mp4"),
              show_default=True, help="The MP4 to write (a .about.json is written beside it).")
@click.option("--photos", type=int, default=10, show_default=True, help="Photos in the clip.")
@click.option("--seconds", type=float, default=3.0, show_default=True, help="Seconds on each photo.")
@click.option("--fps", type=float, default=15.0, show_default=True)
@click.pass_context
def demo_clip(ctx: click.Context, out: Path, photos: int, seconds: float, fps: float) -> None:
    """Compose the stop-sign demo clip: a pan and zoom over real validation photos (composed, not real video)."""
    from toolkit.data.clips import compose_stop_sign_clip

    clip = compose_stop_sign_clip(out, mirror=ctx.obj["mirror"], photos=photos, seconds=seconds, fps=fps)
    click.echo(f"wrote {clip.video} ({clip.frames} frames, {len(clip.photos)} photos; composed, see {clip.about})")
