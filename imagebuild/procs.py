"""Finding and stopping our own descendant processes (a libguestfs appliance, a stuck helper), and
naming a process so that another one can later tell whether it still runs."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: the ppid follows the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int | None = None) -> list[int]:
    root = os.getpid() if pid is None else pid
    kids = _children_map()
    out: list[int] = []
    todo = list(kids.get(root, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kill_descendants(sig: int = signal.SIGKILL) -> list[int]:
    """Signal every process below this one; returns the pids signalled."""
    pids = descendants()
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return pids


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (e.g. a dead build's work dir)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(int(entry.name))
    return out


def stop_processes(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def boot_id() -> str:
    """This host boot's random id (changes at every boot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def proc_start_time(pid: int) -> str:
    """When ``pid`` started, in clock ticks since boot ("" if it does not exist): with the pid it names
    one process, since pids are reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_token(pid: int | None = None) -> str:
    """``host/boot_id/pid/start``: names one process on one host boot, for owner records kept elsewhere."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{boot_id()}/{pid}/{proc_start_time(pid)}"


def token_alive(token: str) -> bool | None:
    """Whether the process a :func:`process_token` names still runs: None when this host cannot tell
    (the token comes from another host, or is not a token)."""
    parts = token.split("/")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    host, boot, pid, start = parts
    if host != socket.gethostname():
        return None
    if boot != boot_id():
        return False  # this host has rebooted since
    return pid_alive(int(pid)) and proc_start_time(int(pid)) == start
