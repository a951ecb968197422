"""Deploy one board: probe it, stage the release, install it with the agent, and read it back.

``deploy_host`` is the whole of ``edgesight deploy BUNDLE --host H`` for one host; ``toolkit.deploy.fleet``
runs it for many. Nothing on the board changes before the probe has shown that the login, sudo, systemd and
the platform are right, and the board switches to the new release in one rename (``current``), so a failure
at any step leaves the board running what it ran before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from devices.bundle import MANIFEST_FILE, Bundle, file_sha256, hash_files
from devices.daemon.config import DaemonConfig, config_error, merge, read_yaml
from devices.errors import ConfigError, EdgesightError
from toolkit.deploy.profiles import Platform, Profile, get_profile
from toolkit.deploy.ssh import Remote, RemoteError, SshError
from toolkit.deploy.unit import UnitSpec, render_unit
from toolkit.deploy.wheelhouse import Wheelhouse, check_runtime_format, project_wheel

log = logging.getLogger(__name__)

STAGING = ".cache/edgesight-deploy"


@dataclass(frozen=True)
class DeployOptions:
    """How to install on every board (the CLI's flags).

    Attributes:
        target: Profile name (``rpi``, ``jetson``).
        runtime: Runtime to install (None: the profile's default).
        root: Install root on the board.
        state_dir: The service's state folder (spool, snapshots).
        service: systemd unit name.
        user: The dedicated service user.
        keep: Releases kept on the board (the current and previous ones always are).
        wheelhouse: Install from these wheels with no index (boards without internet).
        ssh_config: ssh_config file (``ssh -F``); None uses ~/.ssh/config.
        health_timeout: Seconds the new release has to answer /healthz with 200.
        connect_timeout: Seconds to reach and log in to a board.
        arch, python: Override the platform a wheelhouse is checked against (default: what the probe finds).
    """

    target: str = "rpi"
    runtime: str | None = None
    root: str = "/opt/edgesight"
    state_dir: str = "/var/lib/edgesight"
    service: str = "edgesight"
    user: str = "edgesight"
    keep: int = 3
    wheelhouse: Path | None = None
    ssh_config: Path | None = None
    health_timeout: float = 60.0
    connect_timeout: int = 10


@dataclass(frozen=True)
class HostResult:
    """What one board runs after a command.

    Attributes:
        host: As given.
        result: ``deployed``, ``unchanged``, ``rolled_back``, ``failed`` (nothing runs), ``unreachable``,
            ``error`` (a step failed before the switch; the board runs what it ran before), ``skipped``.
        release: The release running now (None when unknown or none).
        bundle: ``name (sha256 prefix)`` of the bundle running now.
        detail: One line: health answer, or what went wrong and the fix.
        seconds: Wall time of the command for this host.
        journal: The service's journal lines around a failure.
    """

    host: str
    result: str
    release: str | None = None
    bundle: str | None = None
    detail: str = ""
    seconds: float = 0.0
    journal: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.result in ("deployed", "unchanged")


# --- the config the board runs ----------------------------------------------------------------------------


def read_config(path: Path | None) -> dict[str, Any]:
    """The user's camera.yaml as a dict (an empty one without a file)."""
    return read_yaml(path) if path is not None else {}


@dataclass(frozen=True)
class DeviceConfig:
    """The validated config of one board, with the folders the unit must let it write."""

    text: str
    writable: tuple[str, ...]
    health_url: str
    status_url: str


def device_config(config: dict[str, Any], profile: Profile, options: DeployOptions, bundle_path: str,
                  cores: int, host: str) -> DeviceConfig:
    """Fill the profile's defaults, point at the release's bundle, make state paths absolute, validate.

    Raises:
        ConfigError: The merged config is invalid (names the host and the field), or has no HTTP server
            (the health check needs /healthz).
    """
    runtime = profile.runtime(options.runtime or config.get("runtime"))
    defaults: dict[str, Any] = {"source": {"uri": profile.source}, "runtime": runtime.name}
    if profile.threads_from_cores:  # the cores shared between the workers (a bad value is refused below)
        workers = config.get("workers", 1)
        defaults["threads"] = max(1, cores // workers) if isinstance(workers, int) and workers >= 1 else cores
    data = merge(defaults, config)
    data["bundle"] = bundle_path
    state = Path(options.state_dir)
    events = data.setdefault("events", {})
    spool = state / (events.get("spool") or "spool/events.sqlite")
    events["spool"] = str(spool)
    writable = [str(spool.parent)]
    if events.get("snapshots", "snapshots") is not None:
        events["snapshots"] = str(state / events.get("snapshots", "snapshots"))
        writable.append(events["snapshots"])
    jsonl = (data.get("sinks") or {}).get("jsonl")
    if jsonl:
        jsonl["path"] = str(state / jsonl["path"])
        writable.append(str(Path(jsonl["path"]).parent))
    writable += [str(state / d) for d in profile.state_dirs]
    try:
        parsed = DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, f"the config for {host}") from None
    if parsed.http is None:
        raise ConfigError(f"{host}: the config turns the HTTP server off (http: null), but the deploy checks /healthz",
                          "keep an http section (it binds 127.0.0.1 by default)")
    if parsed.http.port == 0:
        raise ConfigError(f"{host}: http.port is 0 (a random port), which the health check cannot find",
                          "set a fixed port, e.g. http: {port: 8080}")
    host_part = "127.0.0.1" if parsed.http.host in ("0.0.0.0", "::", "localhost") else parsed.http.host
    base = f"http://{host_part}:{parsed.http.port}"
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    return DeviceConfig(text, tuple(dict.fromkeys(writable)), f"{base}/healthz", f"{base}/api/status")


# --- one board --------------------------------------------------------------------------------------------


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _bundle_label(record: dict | None) -> str | None:
    if not record:
        return None
    return f"{record['bundle']} ({record['bundle_sha256'][:12]})"


def deploy_host(host: str, bundle: Bundle, config: dict[str, Any], options: DeployOptions) -> HostResult:
    """Install ``bundle`` with ``config`` on one board and leave it running (or what it ran before).

    Never raises for a problem of this host: the result says what happened, so that a fleet goes on.
    """
    started = time.monotonic()
    try:
        with Remote(host, options.ssh_config, options.connect_timeout) as remote:
            result = _deploy(remote, bundle, config, options)
    except SshError as exc:
        result = HostResult(host, "unreachable", detail=str(exc))
    except EdgesightError as exc:
        result = HostResult(host, "error", detail=str(exc))
    return replace(result, seconds=time.monotonic() - started)


def _probe(remote: Remote, options: DeployOptions) -> dict:
    probe = remote.agent("probe", "--root", options.root, "--service", options.service, timeout=60)
    if not probe["systemd"]:
        raise RemoteError(f"{remote.host} does not run systemd, which the service needs",
                          "use a systemd distribution (Raspberry Pi OS, JetPack/Ubuntu), or run the container image")
    remote.sudo = probe["uid"] != 0
    if remote.sudo and remote.run("sudo -n true", timeout=30).returncode != 0:
        raise RemoteError(f"{remote.host}: the login user cannot use sudo without a password",
                          "add 'USER ALL=(ALL) NOPASSWD: ALL' in /etc/sudoers.d/ on the board, or log in as root")
    return probe


def _deploy(remote: Remote, bundle: Bundle, config: dict[str, Any], options: DeployOptions) -> HostResult:
    profile = get_profile(options.target)
    runtime = profile.runtime(options.runtime or config.get("runtime"))
    check_runtime_format(runtime, bundle.manifest.format)
    # Nothing is copied before the board is known to fit: login, sudo, systemd, CPU and Python.
    probe = _probe(remote, options)
    house = Wheelhouse.load(options.wheelhouse) if options.wheelhouse else None
    if house:
        house.check_fits(Platform(probe["arch"], probe["python"], profile.platform.glibc))
    spec = _plan(remote.host, bundle, config, options, probe, house)
    current = probe["current"]
    if current and current.get("id") == spec["release_id"] and probe["healthy"]:
        return HostResult(remote.host, "unchanged", spec["release_id"], _bundle_label(current),
                          f"already runs this bundle and config; healthy: {probe['health']}")
    staging = f"{probe['home']}/{STAGING}/{spec['release_id']}"
    if house and spec["venv_key"] not in probe["venvs"]:
        # The deploy ships this workstation's own wheel; the wheelhouse brings the dependencies.
        remote.push(house.folder, spec["wheels"], rsync=probe["rsync"], exclude=("edgesight-*.whl",))
    with tempfile.TemporaryDirectory(prefix="edgesight-stage-") as tmp:
        stage = Path(tmp)
        shutil.copytree(bundle.path, stage / "bundle")
        (stage / "camera.yaml").write_text(spec.pop("config_text"))
        shutil.copy2(spec.pop("wheel_path"), stage / spec["project_wheel"])
        (stage / "spec.json").write_text(json.dumps(spec, indent=2))
        remote.push(stage, staging, rsync=probe["rsync"])
    answer = remote.agent("apply", "--root", options.root, "--service", options.service,
                          "--spec", f"{staging}/spec.json", root=True)
    return _result(remote.host, answer)


def _plan(host: str, bundle: Bundle, config: dict[str, Any], options: DeployOptions, probe: dict,
          house: Wheelhouse | None) -> dict[str, Any]:
    """The agent's spec: keys, the rendered config and unit, and where everything goes."""
    profile = get_profile(options.target)
    runtime = profile.runtime(options.runtime or config.get("runtime"))
    wheel = project_wheel()
    # What this deploy installs, as keys: the same software, bundle and config give the same release.
    venv_key = _digest(file_sha256(wheel), runtime.extras, runtime.requirements, probe["python"],
                       house.dependencies if house else "index")[:16]
    bundle_sha = _digest(hash_files(bundle.path), file_sha256(bundle.path / MANIFEST_FILE))
    release_id = _digest(venv_key, bundle.path.name, bundle_sha, config, options.target, runtime.name, probe["cores"],
                         options.root, options.state_dir)[:12]
    bundle_path = f"{options.root}/releases/{release_id}/{bundle.path.name}"
    dev = device_config(config, profile, options, bundle_path, probe["cores"], host)
    unit = render_unit(UnitSpec(options.service, options.root, options.state_dir, dev.writable, options.user,
                                profile, "edgesight camera detector"))
    return {
        "root": options.root, "service": options.service, "user": options.user, "groups": list(profile.groups),
        "state_dir": options.state_dir, "writable": list(dev.writable), "venv_key": venv_key,
        "project_wheel": wheel.name, "wheel_path": wheel, "extras": list(runtime.extras),
        "requirements": list(runtime.requirements), "wheels": f"{probe['home']}/{STAGING}/wheels" if house else "",
        "release_id": release_id, "bundle_name": bundle.path.name, "unit": unit, "config_text": dev.text,
        "health_url": dev.health_url, "health_timeout": options.health_timeout, "start_timeout": 120,
        "keep": options.keep,
        "release": {"id": release_id, "bundle": bundle.path.name, "bundle_sha256": bundle_sha,
                    "format": bundle.manifest.format, "runtime": runtime.name, "target": options.target,
                    "venv": venv_key, "health_url": dev.health_url, "status_url": dev.status_url},
    }


def _result(host: str, answer: dict[str, Any]) -> HostResult:
    """The agent's answer to ``apply`` as a row of the table."""
    label = _bundle_label(answer.get("record"))
    journal = tuple(answer.get("journal", ()))
    if answer["result"] == "rolled_back":
        detail = f"new release failed its health check ({answer['reason']}); rolled back to {answer['release']}"
        return HostResult(host, "rolled_back", answer["release"], label, detail, journal=journal)
    if answer["result"] == "failed":
        return HostResult(host, "failed", None, None, f"the release failed its health check ({answer['reason']}) "
                          "and there is no earlier one to go back to: the service is stopped", journal=journal)
    return HostResult(host, answer["result"], answer["release"], label, f"healthy: {answer['health']}")


def host_command(host: str, command: str, options: DeployOptions, lines: int = 30) -> dict:
    """``status``, ``logs`` or ``rollback`` on one board: the agent's answer.

    Raises:
        SshError: The board cannot be reached.
        RemoteError: The agent failed (e.g. nothing to roll back to).
    """
    with Remote(host, options.ssh_config, options.connect_timeout) as remote:
        args = ["--root", options.root, "--service", options.service, "--lines", str(lines),
                "--health-timeout", str(options.health_timeout)]
        if command == "rollback":
            _probe(remote, options)
            return remote.agent("rollback", *args, root=True)
        # The journal of a system service is readable by root and the adm/systemd-journal groups only.
        probe = remote.agent("probe", "--root", options.root, "--service", options.service, timeout=60)
        remote.sudo = probe["uid"] != 0
        return remote.agent(command, *args, root=remote.sudo and remote.run("sudo -n true").returncode == 0)
