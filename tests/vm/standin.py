"""Builds the SCRIPTED INSTALLER (a stand-in for anaconda, see standin/init) and an install tree for it.

The tree has the CentOS 7.9 layout (``.treeinfo`` with checksums, ``images/pxeboot/vmlinuz`` and
``initrd.img``) plus ``rootfs.tar``, the payload the stand-in installs where anaconda would install
packages. The kernel is the host's Debian kernel; the initrd is busybox plus the few kernel modules,
programs and libraries the installer needs, all from the host's Debian packages.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent / "standin"
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "ext4", "crc32c_generic",
           "ata_piix", "sr_mod", "isofs")  # the last three: an install CD-ROM on the pc machine's IDE
PROGRAMS = ("/sbin/sfdisk", "/sbin/mke2fs")


def host_kernel() -> tuple[Path, str]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError("no /boot/vmlinuz-*: install linux-image-amd64")
    k = kernels[-1]
    return k, k.name.removeprefix("vmlinuz-")


def _module_closure(version: str) -> list[str]:
    moddir = Path("/lib/modules") / version
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    out: list[str] = []
    todo = [by_name[m] for m in MODULES]
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(deps[p])
    return out


def _libs(program: str) -> list[str]:
    res = subprocess.run(["ldd", program], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in res.splitlines():
        parts = line.split()
        if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
            libs.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def _copy(src: str, root: Path) -> None:
    dest = root / src.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(src).resolve(), dest)


def build_initrd(dest: Path, work: Path) -> Path:
    _, version = host_kernel()
    root = work / "initramfs"
    if root.exists():
        shutil.rmtree(root)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "mnt", "etc", "run"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], check=True, capture_output=True, text=True).stdout.split()
    own = {Path(p).name for p in PROGRAMS}  # the real e2fsprogs/util-linux tools, not busybox's
    for a in applets:
        link = root / "bin" / a
        if not link.exists() and a not in own:
            link.symlink_to("busybox")
    for prog in PROGRAMS:
        _copy(prog, root)
        for lib in _libs(prog):
            _copy(lib, root)
    shutil.copy2("/etc/mke2fs.conf", root / "etc/mke2fs.conf")
    moddir = Path("/lib/modules") / version
    for rel in _module_closure(version):
        _copy(str(moddir / rel), root)
    for f in ("modules.dep", "modules.alias", "modules.builtin", "modules.order"):
        if (moddir / f).exists():
            _copy(str(moddir / f), root)
    shutil.copy2(HERE / "init", root / "init")
    shutil.copy2(HERE / "udhcpc.script", root / "udhcpc.script")
    (root / "init").chmod(0o755)
    (root / "udhcpc.script").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True, text=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root, input=names.encode(),
                             check=True, capture_output=True).stdout
    dest.write_bytes(gzip.compress(archive, compresslevel=6))
    shutil.rmtree(root)
    return dest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_tree(tree: Path, work: Path, payload: Path | None) -> dict[str, str]:
    """Lay out the install tree; returns the pinned sha256 of kernel and initrd."""
    pxe = tree / "images" / "pxeboot"
    pxe.mkdir(parents=True, exist_ok=True)
    kernel, _ = host_kernel()
    shutil.copy2(kernel, pxe / "vmlinuz")
    build_initrd(pxe / "initrd.img", work)
    pins = {"kernel_sha256": sha256(pxe / "vmlinuz"), "initrd_sha256": sha256(pxe / "initrd.img")}
    (tree / ".treeinfo").write_text(
        "[general]\nname = imagebuild scripted installer\nfamily = Imagebuild\nversion = 12\narch = x86_64\n\n"
        "[images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n\n"
        f"[checksums]\nimages/pxeboot/vmlinuz = sha256:{pins['kernel_sha256']}\n"
        f"images/pxeboot/initrd.img = sha256:{pins['initrd_sha256']}\n")
    if payload is not None:
        (tree / "rootfs.tar").unlink(missing_ok=True)
        (tree / "rootfs.tar").symlink_to(payload)
    return pins


def build_iso(iso: Path, tree: Path, payload: Path) -> str:
    """An install ISO with the tree's layout (kernel, initrd, .treeinfo) and the payload, as a
    distribution's DVD carries its packages; returns its sha256."""
    top = iso.parent / (iso.name + ".d")
    if top.exists():
        shutil.rmtree(top)
    shutil.copytree(tree / "images", top / "images")
    shutil.copy2(tree / ".treeinfo", top / ".treeinfo")
    (top / "rootfs.tar").symlink_to(payload)
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-follow-links", "-iso-level", "3", "-V",
                    "IMAGEBUILD_STANDIN", "-R", "-o", str(iso), str(top)], check=True, capture_output=True)
    shutil.rmtree(top)
    return sha256(iso)
