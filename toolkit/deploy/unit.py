"""The systemd unit that runs ``edgesight run`` on a board.

``Type=notify``: the daemon says ``READY=1`` once the camera delivers and the detector answers, so
``systemctl restart`` returns when the new release really runs; ``WATCHDOG=1`` comes only while frames make
progress, so a wedged camera or runtime is restarted (``Restart=on-failure``). The sandbox follows
systemd.exec(5): the whole file system is read-only (``ProtectSystem=strict``) except the spool and snapshot
folders, the release (bundle, config, venv) is read-only, and the camera device groups are allowed
explicitly (``DeviceAllow``; ``PrivateDevices`` would hide the cameras).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.deploy.profiles import Profile


@dataclass(frozen=True)
class UnitSpec:
    """What the unit needs to know about one installation.

    Attributes:
        service: Unit name without ``.service``.
        root: Install root on the board (``current`` lives here).
        state_dir: The service user's state folder (spool, snapshots).
        writable: Folders the service may write (spool, snapshots, sink files); all else is read-only.
        user: The dedicated service user.
        profile: The board's profile (devices, groups, memory, environment).
        description: Shown by ``systemctl status``.
        watchdog_sec: Seconds without ``WATCHDOG=1`` before systemd restarts the daemon.
        start_timeout_sec: Seconds for ``READY=1`` (a Jetson's first start builds the TensorRT engine).
    """

    service: str
    root: str
    state_dir: str
    writable: tuple[str, ...]
    user: str
    profile: Profile
    description: str
    watchdog_sec: int = 60
    start_timeout_sec: int = 120

    @property
    def exec_start(self) -> str:
        """The daemon's command line, through the ``current`` link so that a switch needs no unit change."""
        return f"{self.root}/current/venv/bin/edgesight run --config {self.root}/current/camera.yaml"


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text."""
    profile = spec.profile
    lines = [
        "# Written by `edgesight deploy`; a redeploy overwrites it.",
        "[Unit]",
        f"Description={spec.description}",
        "Wants=network-online.target",
        "After=network-online.target",
        # An appliance never gives up restarting: no start-rate limit.
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={spec.exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5",
        f"TimeoutStartSec={spec.start_timeout_sec}",
        # The daemon flushes its sinks within 2 s of SIGTERM; 10 s leaves room for a slow broker.
        "TimeoutStopSec=10",
        f"WatchdogSec={spec.watchdog_sec}",
        f"User={spec.user}",
        f"Group={spec.user}",
        *([f"SupplementaryGroups={' '.join(profile.groups)}"] if profile.groups else []),
        f"WorkingDirectory={spec.state_dir}",
        "Environment=PYTHONUNBUFFERED=1",
        *(f"Environment={env}" for env in profile.environment),
        "",
        "# Sandbox: nothing is writable but the state folders; the release is read-only.",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        f"ReadWritePaths={' '.join(spec.writable)}",
        f"ReadOnlyPaths={spec.root}",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "",
        "# Cameras: only these device groups (and /dev/null, zero, random...) can be opened.",
        "DevicePolicy=closed",
        *(f"DeviceAllow={device}" for device in profile.device_allow),
        f"MemoryMax={profile.memory_max}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
