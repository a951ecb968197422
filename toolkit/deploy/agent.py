"""The device half of ``edgesight deploy``: run on the board by its system Python, standard library only.

The workstation pipes this file to ``python3 -`` over SSH (``sudo -n`` unless it logs in as root), with one
command, and reads one JSON line from its stdout; progress goes to stderr. Commands:

- ``probe``: what the board is (arch, Python, cores, systemd, rsync) and runs (current release, health).
- ``apply SPEC``: install the staged release: user, folders, venv, release folder, unit, atomic switch of
  ``current``, restart, wait for /healthz, roll back to the previous release if the check fails, prune.
- ``rollback``, ``status``, ``logs``.

Layout on the board (``--root``, default /opt/edgesight; state in /var/lib/edgesight)::

    releases/<id>/<bundle name>/ read-only copy of the bundle
    releases/<id>/camera.yaml    the config the service runs
    releases/<id>/venv ->        ../../venvs/<venv key>  (a venv is shared by releases with the same wheels)
    releases/<id>/release.json   what the release is (keys, bundle, when)
    current -> releases/<id>     switched with one rename()
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pwd
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

RELEASE_FILE = "release.json"
UNIT_FILE = "unit.service"
COMPLETE_MARK = ".complete"


class AgentError(Exception):
    """A step failed on the board; the message says which and why."""


def say(message: str) -> None:
    print(f"[{platform.node()}] {message}", file=sys.stderr, flush=True)


def run(*argv: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip()[-800:]
        raise AgentError(f"`{' '.join(argv)}` failed ({proc.returncode}): {said}")
    return proc


# --- what is installed ------------------------------------------------------------------------------------


def read_release(path: Path) -> dict | None:
    try:
        return json.loads((path / RELEASE_FILE).read_text())
    except (OSError, ValueError):
        return None


def current_release(root: Path) -> tuple[Path | None, dict | None]:
    link = root / "current"
    if not link.is_symlink():
        return None, None
    target = (root / os.readlink(link)).resolve()
    return target, read_release(target)


def releases(root: Path) -> list[tuple[Path, dict]]:
    """Installed releases, oldest first."""
    found = [(p, read_release(p)) for p in (root / "releases").glob("*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted(((p, r) for p, r in found if r), key=lambda item: item[1]["deployed_unix"])


def health(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, response.read(300).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read(300).decode(errors='replace').strip()}"
    except (OSError, ValueError) as exc:
        return False, f"no answer: {exc}"


def service_state(service: str) -> dict:
    if not shutil.which("systemctl"):
        return {"ActiveState": "no systemd"}
    props = "ActiveState,SubState,NRestarts,ExecMainStartTimestamp,MainPID,Result"
    out = run("systemctl", "show", service, f"--property={props}", check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# --- commands ---------------------------------------------------------------------------------------------


def probe(args: argparse.Namespace) -> dict:
    root = Path(args.root)
    _, release = current_release(root)
    venvs = sorted(p.name for p in (root / "venvs").glob("*") if (p / COMPLETE_MARK).is_file())
    state = service_state(args.service)
    url = (release or {}).get("health_url")
    healthy = health(url) if url and state.get("ActiveState") == "active" else (False, "")
    return {
        "home": str(Path.home()),
        "arch": platform.machine(),
        "python": "{}.{}".format(*sys.version_info[:2]),
        "cores": os.cpu_count() or 1,
        "uid": os.getuid(),
        "systemd": Path("/run/systemd/system").is_dir(),
        "rsync": shutil.which("rsync") is not None,
        "current": release,
        "venvs": venvs,
        "releases": [p.name for p, _ in releases(root)],
        "state": state,
        "healthy": healthy[0],
        "health": healthy[1],
    }


def ensure_user(spec: dict) -> None:
    user = spec["user"]
    for group in spec["groups"]:
        if run("getent", "group", group, check=False).returncode != 0:
            run("groupadd", "--system", group)
    try:
        pwd.getpwnam(user)
    except KeyError:
        say(f"creating system user {user}")
        run("useradd", "--system", "--user-group", "--home-dir", spec["state_dir"], "--no-create-home",
            "--shell", "/usr/sbin/nologin", user)
    if spec["groups"]:
        run("usermod", "--append", "--groups", ",".join(spec["groups"]), user)


def ensure_state_dirs(spec: dict) -> None:
    entry = pwd.getpwnam(spec["user"])
    state = Path(spec["state_dir"])
    for folder in [state, *(Path(p) for p in spec["writable"])]:
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        folder.chmod(0o750)


def ensure_venv(root: Path, staging: Path, spec: dict) -> Path:
    """The venv of ``spec['venv_key']``, built once; a half-built one (no marker) is built again."""
    venv = root / "venvs" / spec["venv_key"]
    if (venv / COMPLETE_MARK).is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    say(f"creating venv {venv.name}")
    started = time.monotonic()
    run(sys.executable, "-m", "venv", str(venv))
    wheel = staging / spec["project_wheel"]
    wanted = [f"{wheel}[{','.join(spec['extras'])}]", *spec["requirements"]]
    # --isolated: the board's own pip.conf must not add an index to an offline install.
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    if spec["wheels"]:
        pip += ["--isolated", "--no-index", "--find-links", spec["wheels"]]
    proc = run(*pip, *wanted, timeout=1800, check=False)
    if proc.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise AgentError(f"installing the device packages failed: {proc.stderr.strip()[-1200:]}")
    (venv / COMPLETE_MARK).write_text(json.dumps({"requirements": wanted}) + "\n")
    say(f"venv ready in {time.monotonic() - started:.1f} s")
    return venv


def make_release(root: Path, staging: Path, spec: dict, venv: Path) -> Path:
    """releases/<id>: the staged bundle and config, read-only, with a link to its venv.

    A release that is already there (the same bundle, config and software deployed before) is reused and
    dated now, so that ``rollback`` goes back to whatever ran before it.
    """
    final = root / "releases" / spec["release_id"]
    now = {"deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "deployed_unix": time.time()}
    existing = read_release(final)
    if existing:
        (final / RELEASE_FILE).write_text(json.dumps(dict(existing, **now), indent=2) + "\n")
        return final
    temp = final.with_name(final.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    # The bundle keeps its folder name: the daemon reports it (events, /api/status) by that name.
    shutil.copytree(staging / "bundle", temp / spec["bundle_name"])
    shutil.copy2(staging / "camera.yaml", temp / "camera.yaml")
    (temp / "venv").symlink_to(os.path.relpath(venv, final))
    (temp / RELEASE_FILE).write_text(json.dumps(dict(spec["release"], **now), indent=2) + "\n")
    for path in [temp / spec["bundle_name"], *(temp / spec["bundle_name"]).rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    (temp / "camera.yaml").chmod(0o444)
    # Each release keeps its unit, so that a rollback also restores the unit it ran under.
    (temp / UNIT_FILE).write_text(spec["unit"])
    os.replace(temp, final)
    return final


def install_unit(service: str, release: Path) -> bool:
    """Install the unit of ``release`` when it differs from the installed one; True if it did."""
    path = Path(f"/etc/systemd/system/{service}.service")
    text = (release / UNIT_FILE).read_text()
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    run("systemctl", "daemon-reload")
    run("systemctl", "enable", "--quiet", service)
    say(f"installed {path}")
    return True


def switch(root: Path, release: Path) -> None:
    """Point ``current`` at ``release`` with one rename(): the service never sees a missing link."""
    temp = root / "current.tmp"
    if temp.is_symlink() or temp.exists():
        temp.unlink()
    temp.symlink_to(os.path.relpath(release, root))
    os.replace(temp, root / "current")


def restart_and_check(spec: dict) -> tuple[bool, str]:
    """Restart the service and wait for /healthz to answer 200 (Type=notify: restart returns at READY=1)."""
    proc = run("systemctl", "restart", spec["service"], timeout=spec["start_timeout"] + 30, check=False)
    if proc.returncode != 0:
        return False, f"systemctl restart failed: {proc.stderr.strip()[-400:]}"
    deadline = time.monotonic() + spec["health_timeout"]
    last = ""
    while time.monotonic() < deadline:
        ok, last = health(spec["health_url"])
        if ok:
            return True, last
        if service_state(spec["service"]).get("ActiveState") in ("failed", "inactive"):
            return False, f"the service stopped ({last})"
        time.sleep(0.25)
    return False, f"/healthz did not answer 200 within {spec['health_timeout']:.0f} s ({last})"


def journal(service: str, lines: int, since: float | None = None) -> list[str]:
    if not shutil.which("journalctl"):
        return []
    argv = ["journalctl", "--unit", service, "--no-pager", "--output", "short-iso", "--lines", str(lines)]
    if since is not None:
        argv += ["--since", f"@{int(since)}"]
    return run(*argv, check=False).stdout.splitlines()


def prune(root: Path, keep: int, protect: set[Path]) -> list[str]:
    """Delete all but the newest ``keep`` releases (never those in ``protect``), then unused venvs."""
    removed = []
    installed = releases(root)
    for path, _ in installed[: max(0, len(installed) - keep)]:
        if path.resolve() not in protect:
            shutil.rmtree(path)
            removed.append(path.name)
    used = {os.path.basename(os.readlink(p / "venv")) for p, _ in releases(root) if (p / "venv").is_symlink()}
    for venv in (root / "venvs").glob("*"):
        if venv.name not in used:
            shutil.rmtree(venv)
            removed.append(f"venv {venv.name}")
    return removed


def apply(args: argparse.Namespace) -> dict:
    spec = json.loads(Path(args.spec).read_text())
    root, staging = Path(spec["root"]), Path(args.spec).parent
    if not Path("/run/systemd/system").is_dir():
        raise AgentError("this board does not run systemd, which the service needs")
    started = time.time()
    ensure_user(spec)
    ensure_state_dirs(spec)
    venv = ensure_venv(root, staging, spec)
    release = make_release(root, staging, spec, venv)
    previous, _ = current_release(root)
    unit_changed = install_unit(spec["service"], release)
    if previous == release.resolve() and not unit_changed:
        ok, detail = health(spec["health_url"])
        if ok and service_state(spec["service"]).get("ActiveState") == "active":
            shutil.rmtree(staging, ignore_errors=True)
            return {"result": "unchanged", "release": release.name, "health": detail, "record": read_release(release)}
    switch(root, release)
    say(f"current -> {release.name}; restarting {spec['service']}")
    ok, detail = restart_and_check(spec)
    if ok:
        removed = prune(root, spec["keep"], {release.resolve(), *([previous] if previous else [])})
        shutil.rmtree(staging, ignore_errors=True)
        return {"result": "deployed", "release": release.name, "health": detail, "pruned": removed,
                "record": read_release(release)}
    # The check failed: keep the journal that says why, then go back to what ran before.
    shutil.rmtree(staging, ignore_errors=True)
    logs = journal(spec["service"], 40, since=started)
    if previous is None or previous == release.resolve():
        run("systemctl", "stop", spec["service"], check=False)
        (root / "current").unlink()
        shutil.rmtree(release, ignore_errors=True)
        return {"result": "failed", "release": release.name, "reason": detail, "journal": logs}
    say(f"health check failed ({detail}); rolling back to {previous.name}")
    switch(root, previous)
    install_unit(spec["service"], previous)
    back_ok, back_detail = restart_and_check(spec)
    shutil.rmtree(release, ignore_errors=True)
    return {"result": "rolled_back", "release": previous.name, "failed_release": release.name, "reason": detail,
            "journal": logs, "rollback_healthy": back_ok, "health": back_detail, "record": read_release(previous)}


def rollback(args: argparse.Namespace) -> dict:
    """Switch to the release that was current before this one, restart, and check health."""
    root = Path(args.root)
    path, record = current_release(root)
    if path is None or record is None:
        raise AgentError(f"nothing is deployed under {root}")
    older = [(p, r) for p, r in releases(root) if r["deployed_unix"] < record["deployed_unix"]]
    if not older:
        raise AgentError(f"{path.name} is the oldest release on the board; there is nothing to roll back to")
    target, target_record = older[-1]
    switch(root, target)
    install_unit(args.service, target)
    say(f"current -> {target.name} (was {path.name}); restarting {args.service}")
    spec = {"service": args.service, "health_url": target_record["health_url"],
            "health_timeout": args.health_timeout, "start_timeout": args.health_timeout}
    ok, detail = restart_and_check(spec)
    return {"result": "rolled_back" if ok else "failed", "release": target.name, "from": path.name,
            "health": detail}


def status(args: argparse.Namespace) -> dict:
    root = Path(args.root)
    _, release = current_release(root)
    state = service_state(args.service)
    ok, detail = health(release["health_url"]) if release else (False, "nothing deployed")
    api = None
    if release:
        try:
            with urllib.request.urlopen(release["status_url"], timeout=3) as response:
                api = json.loads(response.read().decode())
        except (OSError, ValueError) as exc:
            api = {"error": str(exc)}
    return {"release": release, "releases": [p.name for p, _ in releases(root)], "state": state,
            "healthy": ok, "health": detail, "api": api, "journal": journal(args.service, args.lines)}


def logs(args: argparse.Namespace) -> dict:
    return {"journal": journal(args.service, args.lines)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="edgesight-agent")
    parser.add_argument("command", choices=["probe", "apply", "rollback", "status", "logs"])
    parser.add_argument("--root", default="/opt/edgesight")
    parser.add_argument("--service", default="edgesight")
    parser.add_argument("--spec")
    parser.add_argument("--health-timeout", type=float, default=60.0)
    parser.add_argument("--lines", type=int, default=30)
    args = parser.parse_args()
    commands = {"probe": probe, "apply": apply, "rollback": rollback, "status": status, "logs": logs}
    try:
        if args.command in ("apply", "rollback"):
            Path(args.root).mkdir(parents=True, exist_ok=True)
            # One deploy at a time per board: a second one waits here.
            with open(Path(args.root) / ".deploy.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                result = commands[args.command](args)
        else:
            result = commands[args.command](args)
    except (AgentError, OSError, subprocess.SubprocessError) as exc:
        result = {"result": "error", "error": str(exc)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
