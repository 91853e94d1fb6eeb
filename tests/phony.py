"""Phony guests (virt-sysprep's test idea): tiny disks the tests make on the host in a second or two,
carrying exactly the files a test needs, with the same layout a real golden image has."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from imagebuild.disklayout import layout_for
from imagebuild.recipe import Firmware, load_recipe

MIB = 1024 * 1024
RECIPE = load_recipe("debian12")

# Every identity marker and leftover a build host can leave in an image, planted in phony guests.
MAC = "52:54:00:de:ad:01"
NM_UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
DPKG_STATUS = "".join(f"Package: {p}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n"
                      for p in RECIPE.all_packages)
CLOUD_UNIT = "[Unit]\nDescription={0}\n\n[Service]\nType=oneshot\n\n[Install]\nWantedBy=cloud-init.target\n"
# cloud-init as Debian 12's package installs it (22.4: four units, enabled by its postinst), and what a
# cloud-init run and a seed leave behind
CLOUD_INIT = {
    "/usr/bin/cloud-init": "#!/usr/bin/python3\n",
    "/etc/cloud/cloud.cfg": "users:\n - default\n",
    "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ NoCloud, ConfigDrive, OpenStack, Ec2, None ]\n",
    **{f"/lib/systemd/system/{u}": CLOUD_UNIT.format(u) for u in (
        "cloud-init-local.service", "cloud-init.service", "cloud-config.service", "cloud-final.service")},
    "/var/lib/cloud/instance/boot-finished": "done\n",
    "/var/lib/cloud/seed/nocloud/meta-data": "instance-id: build-host\n",
    "/var/log/cloud-init.log": "build host's run\n",
    "/etc/systemd/network/10-cloud-init-ens3.network": f"[Match]\nMACAddress={'52:54:00:de:ad:01'}\n",
    "/etc/ssh/sshd_config.d/50-cloud-init.conf": "PasswordAuthentication yes\n",
    "/etc/sudoers.d/90-cloud-init-users": "debian ALL=(ALL) NOPASSWD:ALL\n",
    "/etc/cloud/cloud-init.disabled": "",
}

MARKED = {
    "/etc/sysconfig/network-scripts/ifcfg-eth0":
        f'DEVICE=eth0\nHWADDR={MAC}\nUUID="{NM_UUID}"\nBOOTPROTO=dhcp\nONBOOT=yes\nMACADDR={MAC}\n',
    "/etc/NetworkManager/system-connections/eth0.nmconnection":
        f"[connection]\nid=eth0\nuuid={NM_UUID}\ntype=ethernet\n[ethernet]\nmac-address={MAC.upper()}\n"
        "cloned-mac-address=52:54:00:00:00:02\n[ipv4]\nmethod=auto\n",
    "/etc/udev/rules.d/70-persistent-net.rules":
        f'SUBSYSTEM=="net", ATTR{{address}}=="{MAC}", NAME="eth0"\n',
    "/etc/network/interfaces": f"auto eth0\niface eth0 inet dhcp\n    hwaddress ether {MAC}\n",
    "/var/lib/dhcp/dhclient.eth0.leases": "lease { fixed-address 10.9.8.7; }\n",
    "/var/lib/NetworkManager/internal-x-eth0.lease": "ADDRESS=10.9.8.7\n",
    "/etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/var/lib/systemd/random-seed": "seedseedseed",
    "/etc/ssh/ssh_host_rsa_key": "PRIVATE", "/etc/ssh/ssh_host_rsa_key.pub": "PUBLIC",
    "/etc/ssh/ssh_host_ed25519_key": "PRIVATE", "/usr/sbin/sshd": "",
    "/etc/hostname": "buildhost.example.com\n",
    "/etc/resolv.conf": "search corp.example\nnameserver 10.1.2.3\n",
    "/etc/fstab": "UUID=@ROOT@ / ext4 errors=remount-ro 0 1\n/swapfile none swap sw 0 0\n"
                  "proc /proc proc defaults 0 0\n",
    "/swapfile": "x" * 4096,
    "/etc/initramfs-tools/conf.d/resume": "RESUME=UUID=1111\n",
    "/var/log/syslog": "Nov 27 build host log line\n", "/var/log/syslog.1.gz": "old",
    "/var/log/apt/history.log": "Start-Date: 2026\n",
    "/var/log/journal/0123456789abcdef0123456789abcdef/system.journal": "JOURNAL",
    "/var/log/installer/cdebconf/questions.dat": "passwd/root-password-crypted $6$x",
    "/root/.bash_history": "echo secret\n", "/home/alice/.bash_history": "ls\n",
    "/root/anaconda-ks.cfg": "rootpw --iscrypted $6$x\n", "/root/original-ks.cfg": "rootpw --iscrypted $6$x\n",
    "/etc/dpkg/dpkg.cfg.d/99mmdebstrap": "force-unsafe-io\n",
    "/var/cache/apt/archives/vim_9.0_amd64.deb": "deb", "/var/cache/apt/pkgcache.bin": "bin",
    "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": "lists",
    "/tmp/build-junk": "junk", "/var/tmp/more-junk": "junk",
    "/var/lib/dpkg/status": DPKG_STATUS,
    "/lib/systemd/system/systemd-resolved.service": "[Unit]\n",
    **CLOUD_INIT,
}




def _run(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=input).stdout


def make_tree(root: Path, files: dict[str, str], symlinks: dict[str, str] | None = None) -> None:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for rel, target in (symlinks or {}).items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)


def make_disk(path: Path, tree: Path, *, size_mib: int = 64, extra: list[tuple[str, int]] | None = None) -> str:
    """An MBR disk: partition 1 ext4 at 1 MiB holding ``tree``, then optional extra partitions
    (("swap"|"ext4", size_mib)). Returns the root filesystem's UUID."""
    extra = extra or []
    root_mib = size_mib - 1 - sum(s for _, s in extra)
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    script = "label: dos\n" + f"start=2048, size={root_mib * 2048}, type=83\n"
    script += "".join(f"size={s * 2048}, type={'82' if k == 'swap' else '83'}\n" for k, s in extra)
    _run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path), input=script)
    fs_uuid = str(uuid.uuid4())
    _run("mkfs.ext4", "-q", "-F", "-d", str(tree), "-U", fs_uuid, "-E", f"offset={MIB},root_owner=0:0",
         str(path), f"{root_mib * 1024}k")
    offset = (1 + root_mib) * MIB
    for kind, size in extra:
        part = path.with_name(path.name + f".p{offset}")
        with open(part, "wb") as f:
            f.truncate(size * MIB)
        if kind == "swap":
            _run("mkswap", "-q", str(part))
        else:
            _run("mkfs.ext4", "-q", "-F", str(part))
        _run("dd", f"if={part}", f"of={path}", "bs=1M", f"seek={offset // MIB}", "conv=notrunc,sparse",
             "status=none")
        part.unlink()
        offset += size * MIB
    return fs_uuid


def read_file(disk: Path, path: str) -> str | None:
    """Read a file from partition 1 on the host (debugfs), independent of libguestfs."""
    res = subprocess.run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={MIB}"], capture_output=True,
                         text=True)
    if "File not found" in res.stderr or "not found by ext2_lookup" in res.stderr:
        return None
    return res.stdout


def exists(disk: Path, path: str) -> bool:
    res = subprocess.run(["debugfs", "-R", f"stat {path}", f"{disk}?offset={MIB}"], capture_output=True,
                         text=True)
    return "Inode:" in res.stdout


def listdir(disk: Path, path: str) -> list[str]:
    res = subprocess.run(["debugfs", "-R", f"ls -p {path}", f"{disk}?offset={MIB}"], capture_output=True,
                         text=True)
    names = [ln.split("/")[5] for ln in res.stdout.splitlines() if ln.count("/") >= 6]
    return [n for n in names if n not in (".", "..")]


def make_layout_disk(path: Path, tree: Path, firmware: Firmware, *, size_mib: int = 192) -> dict[str, str]:
    """A disk in the layout of ``firmware`` (imagebuild.disklayout), made the way the bootstrap
    installer makes it: partition table, ext4 `/` holding ``tree``, an empty vfat ESP where the layout
    has one. Returns {"root": fs uuid, "esp": vfat volume id or ""}."""
    layout = layout_for(firmware)
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    _run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path), input=layout.sfdisk_script(str(path)))
    table = json.loads(_run("sfdisk", "--json", str(path)))["partitiontable"]["partitions"]
    parts = {int(p["node"][len(str(path)):]): (int(p["start"]), int(p["size"])) for p in table}
    fs_uuid = str(uuid.uuid4())
    start, size = parts[layout.root.number]
    _run("mkfs.ext4", "-q", "-F", "-d", str(tree), "-U", fs_uuid, "-E", f"offset={start * 512},root_owner=0:0",
         str(path), f"{size // 2}k")
    esp_id = ""
    if layout.esp is not None:
        esp_id = "CAFE0001"
        start, size = parts[layout.esp.number]
        _run("mkfs.fat", "-F", "32", "-s", "1", "-i", esp_id, f"--offset={start}", str(path), str(size // 2))
    return {"root": fs_uuid, "esp": f"{esp_id[:4]}-{esp_id[4:]}" if esp_id else ""}
