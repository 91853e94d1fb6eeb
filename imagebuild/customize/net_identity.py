"""NIC identity: nothing in the image may name the build host's NIC (MAC) or connection (UUID)."""

from __future__ import annotations

import re

from ..guest import Guest
from .registry import StepContext, existing, register, register_removal

IFCFG = "/etc/sysconfig/network-scripts/ifcfg-*"
NM_DIR = "/etc/NetworkManager/system-connections"
PERSISTENT_NET = ("/etc/udev/rules.d/70-persistent-net.rules",
                  "/etc/udev/rules.d/75-persistent-net-generator.rules")
IFUPDOWN = ("/etc/network/interfaces", "/etc/network/interfaces.d/*")
LEASES = ("/var/lib/dhcp/*.leases", "/var/lib/dhcp/*.lease", "/var/lib/dhclient/*",
          "/var/lib/NetworkManager/*.lease", "/var/lib/NetworkManager/*.leases",
          "/var/lib/NetworkManager/secret_key", "/var/lib/NetworkManager/timestamps",
          "/var/lib/systemd/network/*", "/var/lib/wicked/*")

IFCFG_ID = re.compile(r"^\s*(HWADDR|UUID|MACADDR)\s*=", re.IGNORECASE)
NM_ID = re.compile(r"^\s*(uuid|mac-address|cloned-mac-address|permanent-mac-address)\s*=")
HWADDRESS = re.compile(r"^\s*hwaddress\b")


def _files(guest: Guest, patterns: tuple[str, ...] | str) -> list[str]:
    pats = (patterns,) if isinstance(patterns, str) else patterns
    return [p for pat in pats for p in guest.glob(pat) if guest.is_file(p)]


def _nm_keyfiles(guest: Guest) -> list[str]:
    return guest.find_files(NM_DIR)


def _strip(guest: Guest, files: list[str], pattern: re.Pattern[str]) -> None:
    for f in files:
        guest.edit_lines(f, lambda line: not pattern.match(line))


def _offending(guest: Guest, files: list[str], pattern: re.Pattern[str]) -> list[str]:
    out = []
    for f in files:
        for n, line in enumerate(guest.read(f).splitlines(), 1):
            if pattern.match(line):
                out.append(f"{f}:{n}: {line.strip()}")
    return out


def _check_ifcfg(guest: Guest, ctx: StepContext) -> list[str]:
    return _offending(guest, _files(guest, IFCFG), IFCFG_ID)


@register("ifcfg-identity", "Remove HWADDR=, MACADDR= and UUID= lines from every ifcfg-* file",
          order=100, check=_check_ifcfg)
def ifcfg_identity(guest: Guest, ctx: StepContext) -> None:
    _strip(guest, _files(guest, IFCFG), IFCFG_ID)


def _check_nm(guest: Guest, ctx: StepContext) -> list[str]:
    return _offending(guest, _nm_keyfiles(guest), NM_ID)


@register("nm-keyfile-identity", "Remove uuid= and MAC addresses from NetworkManager keyfiles",
          order=100, check=_check_nm)
def nm_keyfile_identity(guest: Guest, ctx: StepContext) -> None:
    # NetworkManager derives a stable UUID from the keyfile's path when uuid= is absent.
    _strip(guest, _nm_keyfiles(guest), NM_ID)


register_removal("udev-persistent-net", "Remove udev persistent-net rules that pin NIC names to MACs",
                 order=100, paths=existing(*PERSISTENT_NET))


def _check_ifupdown(guest: Guest, ctx: StepContext) -> list[str]:
    return _offending(guest, _files(guest, IFUPDOWN), HWADDRESS)


@register("ifupdown-hwaddress", "Remove hwaddress lines from /etc/network/interfaces*",
          order=100, check=_check_ifupdown)
def ifupdown_hwaddress(guest: Guest, ctx: StepContext) -> None:
    _strip(guest, _files(guest, IFUPDOWN), HWADDRESS)


register_removal("dhcp-leases", "Remove DHCP client leases and NetworkManager state",
                 order=100, paths=lambda guest: _files(guest, LEASES))
