"""Traces of the build: logs, shell history, package caches, temporary files, installer leftovers."""

from __future__ import annotations

import posixpath
import re

from ..guest import Guest
from ..install.bootstrap import BUILD_ONLY_CONFIG
from .registry import StepContext, existing, register, register_removal

ROTATED = re.compile(r"(\.\d+|\.gz|\.xz|\.bz2|\.old|-\d{8})$")
HISTORIES = ("/root/.bash_history", "/root/.sh_history", "/root/.zsh_history", "/root/.python_history",
             "/root/.lesshst", "/root/.viminfo", "/root/.wget-hsts", "/home/*/.bash_history",
             "/home/*/.python_history", "/home/*/.lesshst", "/home/*/.viminfo")
# Answer files hold the root password hash and the build network; d-i keeps its whole debconf db;
# mmdebstrap's build-time apt and dpkg settings (force-unsafe-io), which the install removes: the check
# here holds every image to it.
INSTALLER_FILES = ("/root/anaconda-ks.cfg", "/root/original-ks.cfg", "/root/install.log",
                   "/root/install.log.syslog", "/var/log/anaconda", "/var/log/installer",
                   "/root/preseed.cfg", "/preseed.cfg", "/ks.cfg", "/imagebuild-install-complete",
                   *BUILD_ONLY_CONFIG)
CACHES = ("/var/cache/apt/archives/*.deb", "/var/cache/apt/*.bin", "/var/lib/apt/lists/*_*",
          "/var/cache/yum/*", "/var/cache/dnf/*", "/var/lib/yum/uuid")
TMP_DIRS = ("/tmp", "/var/tmp")


def _expand(guest: Guest, patterns: tuple[str, ...]) -> list[str]:
    out = []
    for pat in patterns:
        parent = posixpath.dirname(pat)
        if "*" in parent:  # /home/*/x: expand the one wildcard directory level
            for d in guest.glob(parent):
                out += [p for p in guest.glob(posixpath.join(d, posixpath.basename(pat)))]
        else:
            out += guest.glob(pat)
    return [p for p in out if guest.lexists(p)]


def _log_files(guest: Guest) -> list[str]:
    return guest.find_files("/var/log")


def _check_logs(guest: Guest, ctx: StepContext) -> list[str]:
    return [f"{p} is not empty" for p in _log_files(guest) if guest.filesize(p) > 0]


@register("logfiles", "Truncate every log under /var/log, remove rotated logs and the journal",
          order=900, check=_check_logs)
def logfiles(guest: Guest, ctx: StepContext) -> None:
    for p in _log_files(guest):
        if ROTATED.search(p) or p.startswith("/var/log/journal/"):
            guest.remove(p)
        else:
            guest.truncate(p)  # keep the file: its owner and mode matter to the daemon writing it
    for d in guest.glob("/var/log/journal/*"):
        if guest.is_dir(d):
            guest.remove_tree(d)  # named after the build's machine-id


register_removal("shell-history", "Remove shell, editor and pager histories of root and users",
                 order=900, paths=lambda guest: _expand(guest, HISTORIES))
register_removal("installer-files", "Remove answer files, installer logs and the installer's build-time "
                 "apt/dpkg settings (anaconda-ks.cfg, /var/log/installer, 99mmdebstrap)", order=900,
                 paths=existing(*INSTALLER_FILES))
register_removal("package-cache", "Empty the apt/yum/dnf caches and package lists", order=900,
                 paths=lambda guest: _expand(guest, CACHES))


def _tmp_entries(guest: Guest) -> list[str]:
    return [posixpath.join(d, n) for d in TMP_DIRS if guest.is_dir(d) for n in guest.ls(d)]


register_removal("tmp-files", "Empty /tmp and /var/tmp", order=900, paths=_tmp_entries)
