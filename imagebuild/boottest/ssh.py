"""SSH into a cell as a cloud user would: the host's OpenSSH client, with a key only the cell's seed
carries, to the guest's own port 22 forwarded to a loopback port of the host.

libvirt 9.0's ``<interface type='user'>`` cannot forward ports, so a cell that logs in gets its NIC from
QEMU's own user network with ``hostfwd`` (``domain.DomainSpec.ssh_port``). The wait is for the SSH
*banner*, never a TCP accept: QEMU's user network accepts on the host port whether or not anything in
the guest listens, and closes the connection at once when nothing does (the peers' lesson: AlmaLinux's
image tests wait for the banner too). Every command goes through the one runner.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BootTestFailed
from ..events import NULL_REPORTER, Reporter
from ..run import run

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listens on now (QEMU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def make_key(directory: Path, reporter: Reporter = NULL_REPORTER) -> tuple[Path, str]:
    """A fresh ed25519 key pair in ``directory``: (private key file, public key line)."""
    key = directory / "id_ed25519"
    key.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagebuild-boot-test", "-f", str(key)],
        reporter=reporter, purpose="a key only this cell's seed carries")
    return key, key.with_suffix(".pub").read_text().strip()


def read_banner(port: int, timeout: float = 5.0) -> str:
    """The server's identification line, or "" when nothing in the guest answered yet."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return ""
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return line if line.startswith("SSH-") else ""


@dataclass(frozen=True)
class SshEndpoint:
    """How the host reaches one cell's sshd."""
    port: int
    key: Path                          # the private key whose public half the seed carried
    user: str
    workdir: Path                      # known_hosts and the connection's control socket live here

    def options(self) -> list[str]:
        return ["-p", str(self.port), "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.workdir / 'known_hosts'}", "-o", "StrictHostKeyChecking=no",
                "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "-F", "/dev/null"]

    def wait_banner(self, deadline: float) -> tuple[str, float]:
        """(banner, seconds waited); BootTestFailed when none came before ``deadline``."""
        start = time.monotonic()
        while time.monotonic() < deadline:
            banner = read_banner(self.port)
            if banner:
                return banner, time.monotonic() - start
            time.sleep(1)
        raise BootTestFailed(f"no SSH banner on {LOOPBACK}:{self.port} (the guest's port 22) within "
                             f"{time.monotonic() - start:.0f}s")

    def run(self, command: str, *, reporter: Reporter = NULL_REPORTER, timeout: float = 90,
            user: str | None = None) -> tuple[int, str, str]:
        """Run ``command`` in the guest as ``user`` (default: the endpoint's) over SSH with the key:
        (exit code, stdout, stderr); 255 is SSH's own failure (refused, key denied)."""
        argv = ["ssh", *self.options(), f"{user or self.user}@{LOOPBACK}", command]
        res = run(argv, reporter=reporter, check=False, timeout=timeout, purpose="log in as a cloud user")
        if res.timed_out:
            return 255, res.stdout, f"ssh did not finish within {timeout:.0f}s"
        return res.returncode, res.stdout, res.stderr

    def auth_methods(self, reporter: Reporter = NULL_REPORTER, user: str | None = None) -> list[str]:
        """What sshd offers this user before any key is tried (``Permission denied (publickey,password)``)."""
        argv = ["ssh", *self.options(), "-o", "PreferredAuthentications=none", "-o", "PubkeyAuthentication=no",
                f"{user or self.user}@{LOOPBACK}", "true"]
        res = run(argv, reporter=reporter, check=False, timeout=60, purpose="the login methods sshd offers")
        if "Permission denied (" in res.stderr:
            return res.stderr.split("Permission denied (", 1)[1].split(")", 1)[0].split(",")
        return []


class LoginWatch:
    """From power-on, in the background: when the guest's sshd first shows its banner, and when the seed's
    key first logs in (seconds from ``started``). The checks run in their own order; this records when a
    cloud user could really have logged in, which is what the first-boot time is measured by."""

    def __init__(self, endpoint: SshEndpoint, started: float, deadline: float,
                 reporter: Reporter = NULL_REPORTER) -> None:
        self.endpoint, self.started, self.deadline, self.reporter = endpoint, started, deadline, reporter
        self.banner = ""
        self.seconds_to_banner: float | None = None
        self.seconds_to_login: float | None = None
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ssh-login-watch", daemon=True)

    def start(self) -> LoginWatch:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            if not self.banner:
                self.banner = read_banner(self.endpoint.port, timeout=3)
                if not self.banner:
                    self._stop.wait(1)
                    continue
                self.seconds_to_banner = round(time.monotonic() - self.started, 1)
            rc, out, err = self.endpoint.run("id -un", reporter=self.reporter, timeout=60)
            if rc == 0 and out.strip() == self.endpoint.user:
                self.seconds_to_login = round(time.monotonic() - self.started, 1)
                return
            self.last_error = f"exit {rc}: {(err or out).strip()[-300:]}"
            self._stop.wait(2)

    def wait(self, deadline: float) -> bool:
        """Until the first login or ``deadline``; True once logged in."""
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return self.seconds_to_login is not None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=70)
