"""The golden package set, installed with the image's own package manager (network on)."""

from __future__ import annotations

from ..errors import CustomizeFailed
from ..guest import Guest
from ..recipe import Family
from .registry import StepContext, register

# libguestfs' appliance network is qemu user networking: its resolver is 10.0.2.3.
APPLIANCE_RESOLVER = "nameserver 10.0.2.3\n"
POLICY_RC = "/usr/sbin/policy-rc.d"


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages from /var/lib/dpkg/status (no dpkg needed: works on any image)."""
    out: dict[str, str] = {}
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            name = fields["Package"]
            arch = fields.get("Architecture", "")
            out[name if arch in ("", "all", "amd64") else f"{name}:{arch}"] = fields.get("Version", "")
    return out


def installed_packages(guest: Guest, family: Family) -> dict[str, str]:
    if family is Family.DEBIAN:
        if not guest.is_file("/var/lib/dpkg/status"):
            return {}
        return parse_dpkg_status(guest.read("/var/lib/dpkg/status"))
    if not guest.exists("/usr/bin/rpm") and not guest.exists("/bin/rpm"):
        return {}
    out = guest.command(["rpm", "-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n"], purpose="list packages")
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def _missing(guest: Guest, ctx: StepContext) -> list[str]:
    have = installed_packages(guest, ctx.recipe.image.family)
    ctx.notes["packages"] = have
    return [p for p in ctx.recipe.all_packages if p not in have]


def _check(guest: Guest, ctx: StepContext) -> list[str]:
    return [f"package {p} is not installed" for p in _missing(guest, ctx)]


class _ApplianceResolver:
    """Point the image at the appliance's resolver while its package manager runs, then restore it."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.link: str | None = None
        self.text: str | None = None

    def __enter__(self) -> None:
        g = self.guest
        if g.is_symlink("/etc/resolv.conf"):
            self.link = g.g.readlink("/etc/resolv.conf")
        elif g.is_file("/etc/resolv.conf"):
            self.text = g.read("/etc/resolv.conf")
        g.remove("/etc/resolv.conf")
        g.write("/etc/resolv.conf", APPLIANCE_RESOLVER, mode=0o644)

    def __exit__(self, *exc: object) -> None:
        g = self.guest
        g.remove("/etc/resolv.conf")
        if self.link is not None:
            g.symlink(self.link, "/etc/resolv.conf")
        elif self.text is not None:
            g.write("/etc/resolv.conf", self.text, mode=0o644)


def _install_debian(guest: Guest, names: list[str]) -> None:
    # No daemon may start inside the appliance (policy-rc.d, Debian policy 9.3.3).
    had_policy = guest.lexists(POLICY_RC)
    if not had_policy:
        guest.write(POLICY_RC, "#!/bin/sh\nexit 101\n", mode=0o755)
    try:
        with _ApplianceResolver(guest):
            env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8"]
            guest.command(env + ["apt-get", "-q", "update"], purpose="refresh package lists")
            guest.command(env + ["apt-get", "-q", "-y", "--no-install-recommends", "install", *names],
                          purpose="install the golden package set")
            guest.command(["apt-get", "clean"], purpose="drop downloaded packages")
    finally:
        if not had_policy:
            guest.remove(POLICY_RC)


def _install_el(guest: Guest, names: list[str]) -> None:
    with _ApplianceResolver(guest):
        guest.command(["yum", "-y", "install", *names], purpose="install the golden package set")
        guest.command(["yum", "clean", "all"], purpose="drop downloaded packages")


@register("packages", "Install the recipe's package set (net-tools lrzsz screen tree vim wget + extras) "
          "with the image's own package manager", order=10, check=_check, needs_network=True)
def packages(guest: Guest, ctx: StepContext) -> None:
    missing = _missing(guest, ctx)
    if not missing:
        return
    if not ctx.network:
        raise CustomizeFailed(f"packages missing from the image and no network to install them: "
                              f"{' '.join(missing)}")
    guest.reporter.info(f"installing {len(missing)} missing package(s) in the image: {' '.join(missing)}")
    if ctx.recipe.image.family is Family.DEBIAN:
        _install_debian(guest, missing)
    else:
        _install_el(guest, missing)
    still = _missing(guest, ctx)
    if still:
        raise CustomizeFailed(f"the package manager ran but these are still not installed: {' '.join(still)}")
