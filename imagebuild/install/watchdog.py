"""The install watchdog: a guest installer either proves it finished or is stopped with a reason.

It watches, at once:
- the serial console and (when the installer has one) its virtio-serial log port, streamed into the
  build log line by line; a known fatal line stops the install within seconds and is quoted;
- activity: disk I/O of the target plus console and log output; none for ``inactivity`` seconds is a hang;
- an absolute timeout, for installs that stay busy forever;
- the end: the guest must power off by itself *and* have printed the completion marker; the disk
  marker is checked afterwards in the libguestfs session. A guest that merely powered off has failed.
On any failure the console log and a screenshot are kept, and the domain is destroyed.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..domain import DomainSpec, screenshot, transient_domain
from ..errors import InstallFailed
from ..events import Reporter

# (pattern, what it means) — lorax's monitor and Oz's experience, plus debian-installer's error lines.
FATAL_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"Traceback \(", "the installer crashed"),
    (r"Error in POSTIN scriptlet", "a package's post-install scriptlet failed"),
    (r"packaging: Missed: NoSuchPackage|No package .* available|Some packages .* are broken|"
     r"Failed to find a package named", "a requested package does not exist"),
    (r"Out of memory:", "the guest ran out of memory"),
    (r"dumped core", "a process dumped core"),
    (r"The following error occurred while installing|There was an error running the kickstart script",
     "the installer reported an error"),
    (r"!! ERROR: |Installation step failed|Failed to retrieve the preconfiguration file|"
     r"Bad archive mirror", "debian-installer reported an error"),
    (r"Kernel panic - not syncing", "the installer's kernel panicked"),
)


class InstallHung(InstallFailed):
    pass


@dataclass(frozen=True)
class Limits:
    inactivity_seconds: int
    timeout_seconds: int
    poll_seconds: float = 1.0


@dataclass
class Outcome:
    seconds: float
    marker_seen: bool
    console_lines: int


class _LineSource:
    """Lines from a growing file or a unix socket, read without blocking the watchdog loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.bytes = 0
        self._buf = b""
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.bytes += len(data)
            self._buf += data
            *complete, self._buf = self._buf.split(b"\n")
            self.lines += [c.decode("utf-8", "replace").rstrip("\r") for c in complete]

    def take(self) -> list[str]:
        with self._lock:
            out, self.lines = self.lines, []
            return out

    def poll(self) -> None:
        """Pull new data if the source is polled (a file); a socket reader feeds itself."""


class _FileTail(_LineSource):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.pos = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        self.pos += len(data)
        if data:
            self.feed(data)


class _SocketReader(_LineSource):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = None
        while not self._stop.is_set() and sock is None:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.path))
                s.settimeout(0.5)
                sock = s
            except OSError:
                time.sleep(0.5)
        while sock is not None and not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            self.feed(data)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _gone(dom: Any) -> bool:
    import libvirt
    try:
        return not dom.isActive()
    except libvirt.libvirtError:
        return True  # a transient domain that powered off no longer exists


def _disk_io(dom: Any, target: str) -> int:
    import libvirt
    try:
        rd_req, rd_bytes, wr_req, wr_bytes, _ = dom.blockStats(target)
        return int(rd_bytes + wr_bytes)
    except libvirt.libvirtError:
        return -1


@contextmanager
def _sources(console: Path, log_socket: Path | None) -> Iterator[list[_LineSource]]:
    srcs: list[_LineSource] = [_FileTail("console", console)]
    reader = _SocketReader("installer-log", log_socket) if log_socket is not None else None
    if reader is not None:
        srcs.append(reader)
    try:
        yield srcs
    finally:
        if reader is not None:
            reader.close()


def run_installer(spec: DomainSpec, *, limits: Limits, marker: str, reporter: Reporter,
                  log_socket: Path | None = None, keep_dir: Path | None = None,
                  fatal: tuple[tuple[str, str], ...] = FATAL_PATTERNS) -> Outcome:
    """Boot the installer domain and watch it until it proves success or fails for a stated reason."""
    fatal_re = [(re.compile(p), why) for p, why in fatal]
    start = time.monotonic()
    marker_seen = False
    n_lines = 0
    with transient_domain(spec, reporter) as dom, _sources(spec.console_log, log_socket) as sources:
        last_activity = start
        last_io = -2
        last_bytes = 0

        def fail(exc_type: type[InstallFailed], message: str) -> InstallFailed:
            if keep_dir is not None and screenshot(dom, keep_dir / "install-screenshot.ppm"):
                message += f"\n(screenshot: {keep_dir / 'install-screenshot.ppm'})"
            return exc_type(message + f"\n--- last console lines ({spec.console_log}) ---\n"
                            + "\n".join(_tail(spec.console_log)))

        first_output: dict[str, float] = {}

        def console_state() -> str:
            """Where the guest's output got to: the first thing to know when a guest seems silent."""
            if not first_output:
                return (f"no installer output at all in {time.monotonic() - start:.0f}s: the guest never "
                        "printed on its serial console (a slow start under emulation, or no kernel console)")
            return "; ".join(f"{name}: first output after {t - start:.0f}s" for name, t in first_output.items()) \
                + f"; {n_lines} lines"

        while True:
            stopped = _gone(dom)
            for src in sources:
                src.poll()
                for line in src.take():
                    n_lines += 1
                    if src.name not in first_output:
                        first_output[src.name] = time.monotonic()
                        reporter.log(f"watchdog: first {src.name} output after {first_output[src.name] - start:.1f}s")
                    reporter.log(f"[{src.name}] {line}")
                    if marker in line:
                        marker_seen = True
                    for rx, why in fatal_re:
                        if rx.search(line):
                            raise fail(InstallFailed, f"install failed: {why}: {line.strip()!r}")
            if stopped:
                break
            now = time.monotonic()
            io = _disk_io(dom, spec.disks[0].target)
            out_bytes = sum(s.bytes for s in sources)
            if io != last_io or out_bytes != last_bytes:
                last_activity, last_io, last_bytes = now, io, out_bytes
            if now - last_activity > limits.inactivity_seconds:
                raise fail(InstallHung, f"install hung: no disk I/O and no installer output for "
                                        f"{limits.inactivity_seconds}s (install.vm.inactivity_seconds); "
                                        f"{console_state()}")
            if now - start > limits.timeout_seconds:
                raise fail(InstallHung, f"install did not finish within {limits.timeout_seconds}s "
                                        f"(install.vm.timeout_seconds); {console_state()}")
            time.sleep(limits.poll_seconds)
    elapsed = time.monotonic() - start
    if not marker_seen:
        raise InstallFailed(f"the installer powered off after {elapsed:.0f}s without printing the completion "
                            f"marker: the install did not finish\n--- last console lines ---\n"
                            + "\n".join(_tail(spec.console_log)))
    return Outcome(elapsed, marker_seen, n_lines)


def _tail(path: Path, n: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ["(no console output)"]
