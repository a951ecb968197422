"""SSH to a board with the system's ``ssh`` and ``rsync`` (or ``scp``): the user's config and keys, no passwords.

Every call uses ``BatchMode=yes``: a host that would ask for a password or a host-key confirmation fails at
once with ssh's own message instead of hanging. One master connection per host (``ControlMaster``) carries
the probe, the copy and the install, so a redeploy costs one TCP and key exchange.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from devices.errors import EdgesightError

log = logging.getLogger(__name__)

AGENT = Path(__file__).with_name("agent.py")
_UNREACHABLE_FIX = (
    "check the host name and port, and that `ssh -o BatchMode=yes {host} true` works from this machine: your "
    "key must be in the board's ~/.ssh/authorized_keys (ssh-copy-id {host}); edgesight never types a password"
)


class SshError(EdgesightError):
    """The board cannot be reached or refused the login; nothing was changed on it."""


class RemoteError(EdgesightError):
    """A step on the board failed; the message carries the board's own words."""


class Remote:
    """One board reached over SSH; a context manager that closes the shared connection.

    Args:
        host: ``user@host``, ``host`` or an alias of the user's SSH config.
        ssh_config: An ssh_config file to use instead of ~/.ssh/config (``ssh -F``).
        connect_timeout: Seconds to wait for the TCP connection and login.
    """

    def __init__(self, host: str, ssh_config: Path | None = None, connect_timeout: int = 10) -> None:
        self.host = host
        self.ssh_config = ssh_config
        self.connect_timeout = connect_timeout
        self._control = tempfile.TemporaryDirectory(prefix="edgesight-ssh-")
        self.sudo = True

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def ssh_options(self) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                   "-o", "ControlMaster=auto", "-o", f"ControlPath={self._control.name}/%C",
                   "-o", "ControlPersist=120", "-o", "ServerAliveInterval=15"]
        return (["-F", str(self.ssh_config)] if self.ssh_config else []) + options

    def run(self, command: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command on the board.

        Raises:
            SshError: ssh itself failed (exit 255: unreachable, refused key, unknown host key).
        """
        argv = ["ssh", *self.ssh_options(), self.host, command]
        log.debug("%s: %s", self.host, command)
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SshError(f"{self.host}: `{command}` did not finish within {timeout:.0f} s",
                           "check the board is responsive (ssh into it by hand)") from exc
        if proc.returncode == 255:
            message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "ssh exited with 255"
            raise SshError(f"cannot log in to {self.host} over SSH: {message}", _UNREACHABLE_FIX.format(host=self.host))
        return proc

    def agent(self, command: str, *args: str, root: bool = False, timeout: float = 1800) -> dict:
        """Run the deploy agent (this package's agent.py, piped to python3) and return its JSON answer.

        Raises:
            RemoteError: The agent reported an error, or the board has no python3 / passwordless sudo.
        """
        sudo = "sudo -n " if root and self.sudo else ""
        line = f"{sudo}python3 - {command} " + " ".join(shlex.quote(a) for a in args)
        proc = self.run(line, stdin=AGENT.read_text(), timeout=timeout)
        for text in proc.stderr.splitlines():
            if text.startswith("["):
                log.info("%s", text)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RemoteError(f"{self.host}: `{line}` failed ({proc.returncode}): {_tail(proc.stderr)}",
                              _fix(proc.stderr))
        answer = json.loads(lines[-1])
        if answer.get("result") == "error":
            raise RemoteError(f"{self.host}: {answer['error']}", "see the message; `edgesight deploy --logs` shows "
                                                                  "the service's journal")
        return answer

    def push(self, local: Path, remote: str, rsync: bool = True, exclude: tuple[str, ...] = ()) -> None:
        """Make the folder ``remote`` on the board a copy of ``local`` (rsync sends only what changed).

        Args:
            local: The folder to copy.
            remote: Its path on the board (absolute, or relative to the login's home).
            rsync: Use rsync; False copies everything with scp (a board without rsync).
            exclude: File name patterns left out.
        """
        self.run(f"mkdir -p {shlex.quote(remote)}")
        if rsync:
            shell = shlex.join(["ssh", *self.ssh_options()])
            argv = ["rsync", "-a", "--delete", *(f"--exclude={p}" for p in exclude), "-e", shell, f"{local}/",
                    f"{self.host}:{remote}/"]
        else:
            files = [p for p in local.iterdir() if not any(p.match(pattern) for pattern in exclude)]
            argv = ["scp", "-q", "-r", "-p", *self.ssh_options(), *map(str, files), f"{self.host}:{remote}/"]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SshError(f"copying {local} to {self.host}:{remote} failed: {_tail(proc.stderr)}",
                           _UNREACHABLE_FIX.format(host=self.host))

    def close(self) -> None:
        """End the shared connection (if one was opened) and remove its socket folder."""
        subprocess.run(["ssh", *self.ssh_options(), "-O", "exit", self.host], capture_output=True, check=False)
        self._control.cleanup()


def _tail(text: str, count: int = 6) -> str:
    return " | ".join(line.strip() for line in (text or "").strip().splitlines()[-count:])


def _fix(stderr: str) -> str:
    if "a password is required" in stderr or "sudo:" in stderr:
        return ("the login user needs passwordless sudo on the board (a line 'USER ALL=(ALL) NOPASSWD: ALL' in "
                "/etc/sudoers.d/), or log in as root")
    if "python3: not found" in stderr or "python3: command not found" in stderr:
        return "install Python 3 on the board (sudo apt install python3 python3-venv)"
    return "see the message above"
