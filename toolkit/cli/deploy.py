"""Board commands: wheelhouse (wheels for offline boards) and deploy (install, status, logs, rollback)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from toolkit.cli.base import cli
from toolkit.deploy.profiles import PROFILES

_PATH = click.Path(path_type=Path)


@cli.command()
@click.option("--target", type=click.Choice(sorted(PROFILES)), default="rpi", show_default=True,
              help="The board the wheels are for.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Wheelhouse folder (wheels already there are reused).")
@click.option("--runtime", help="Runtime to include (default: the target's first; rpi also tflite_runtime).")
@click.option("--arch", help="Override the target's CPU (uname -m), e.g. x86_64 for a PC stand-in.")
@click.option("--python", "python_version", help="Override the board's Python (major.minor), e.g. 3.13 for Debian "
              "trixie.")
@click.option("--glibc", help="Override the board's glibc (e.g. 2.41).")
def wheelhouse(target: str, out_dir: Path, runtime: str | None, arch: str | None, python_version: str | None,
               glibc: str | None) -> None:
    """Download the device install's wheels for a board, so that it installs with no internet."""
    from toolkit.deploy.wheelhouse import build_wheelhouse

    profile = PROFILES[target].with_platform(arch, python_version, glibc)
    house = build_wheelhouse(profile, out_dir, runtime)
    size = sum((out_dir / name).stat().st_size for name in house.files) / 1e6
    click.echo(f"{len(house.files)} wheels ({size:.0f} MB) for {profile.title} [{profile.platform.describe()}], "
               f"runtime {house.runtime}, in {out_dir}")
    click.echo(f"deploy with: edgesight deploy BUNDLE --host HOST --target {target} --wheelhouse {out_dir}")


@cli.command()
@click.argument("bundle", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, help="user@board or an SSH config alias (repeatable).")
@click.option("--inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML list of boards with per-board config overrides (docs/deploy.md).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The camera config (edgesight run --config); the target fills what it leaves open.")
@click.option("--target", type=click.Choice(sorted(PROFILES)), default="rpi", show_default=True)
@click.option("--runtime", help="Runtime on the board (rpi: ai_edge_litert or tflite_runtime).")
@click.option("--wheelhouse", "wheelhouse_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Install from these wheels with no index (boards without internet).")
@click.option("--status", "action", flag_value="status", help="Show what the boards run and how they are.")
@click.option("--logs", "action", flag_value="logs", help="Show the service's journal.")
@click.option("--rollback", "action", flag_value="rollback", help="Go back to the previous release.")
@click.option("--parallel", default=4, show_default=True, help="Boards deployed at the same time.")
@click.option("--staged", is_flag=True, help="Deploy the first board alone; continue only when it is healthy.")
@click.option("--keep", default=3, show_default=True, help="Releases kept on each board.")
@click.option("--root", default="/opt/edgesight", show_default=True, help="Install folder on the board.")
@click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="EDGESIGHT_SSH_CONFIG", help="ssh_config file (default: ~/.ssh/config).")
@click.option("--health-timeout", default=60.0, show_default=True, help="Seconds for the new release's /healthz.")
@click.option("--lines", default=30, show_default=True, help="Journal lines for --logs and --status.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def deploy(bundle: Path | None, hosts: tuple[str, ...], inventory: Path | None, config_file: Path | None,
           target: str, runtime: str | None, wheelhouse_dir: Path | None, action: str | None, parallel: int,
           staged: bool, keep: int, root: str, ssh_config: Path | None, health_timeout: float, lines: int,
           as_json: bool) -> None:
    """Install BUNDLE as a systemd service on boards over SSH, with rollback; or show --status / --logs."""
    from devices.bundle import load_bundle
    from toolkit.deploy.fleet import deploy_fleet, plan_hosts, render_table
    from toolkit.deploy.release import DeployOptions

    options = DeployOptions(target=target, runtime=runtime, root=root, keep=keep, wheelhouse=wheelhouse_dir,
                            ssh_config=ssh_config, health_timeout=health_timeout)
    planned = plan_hosts(hosts, inventory, config_file, options)
    if action:
        failed = sum(not _board_command(entry.host, action, entry.options, lines, as_json) for entry in planned)
        sys.exit(1 if failed else 0)
    if bundle is None:
        raise click.UsageError("give the BUNDLE folder to deploy (or --status, --logs, --rollback)")
    verified = load_bundle(bundle)

    def progress(result) -> None:
        if not as_json:
            # A failure keeps its fix line(s); a success needs one line.
            detail = result.detail if not result.ok else result.detail.splitlines()[0]
            click.echo(f"{result.host}: {result.result} ({result.seconds:.1f} s) {detail}", err=True)
            for line in result.journal[-10:]:
                click.echo(f"    {line}", err=True)

    results = deploy_fleet(verified, planned, parallel=parallel, staged=staged, on_result=progress)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    else:
        click.echo(render_table(results))
    sys.exit(0 if all(r.ok for r in results) else 1)


def _board_command(host: str, action: str, options, lines: int, as_json: bool) -> bool:
    """Run --status / --logs / --rollback on one board and print its short summary; True if it went well."""
    from devices.errors import EdgesightError
    from toolkit.deploy.release import host_command
    from toolkit.deploy.status import summary

    try:
        answer = host_command(host, action, options, lines)
    except EdgesightError as exc:
        click.echo(f"{host}: {exc}", err=True)
        return False
    click.echo(json.dumps({"host": host, **answer}, indent=2) if as_json else summary(host, action, answer))
    return answer.get("result", "ok") not in ("failed",)
