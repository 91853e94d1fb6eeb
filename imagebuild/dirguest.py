"""A ``Guest`` over a plain host directory: the file operations the customize steps use, on a tree.

osbuild tests each stage on a temporary tree; this lets every customize step (and its check) run on a
tiny tree in milliseconds, where the libguestfs tier costs ~30 s a launch under TCG. Paths are the
image's (``/etc/fstab``), resolved under ``root`` the way the image's own kernel would: absolute symlink
targets point inside the tree, and nothing escapes it. Running programs in the image is not offered:
``command`` raises, so a step that needs one is tested in the libguestfs tier or a full build.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shutil
from pathlib import Path

from .events import NULL_REPORTER, Reporter
from .guest import GuestError
from .recipe import Firmware


class DirGuest:
    """Duck-types ``guest.Guest`` for the customize steps."""

    def __init__(self, root: Path, *, reporter: Reporter = NULL_REPORTER,
                 firmware: Firmware = Firmware.BIOS) -> None:
        self.root = root.resolve()
        self.reporter = reporter
        self.firmware = firmware
        self.root_device = str(root)
        self.esp_device = ""

    # -- paths ---------------------------------------------------------------------------------------
    def _host(self, path: str, *, follow: bool = True) -> Path:
        """The host path of image path ``path``; symlinks resolved inside the tree (40 hops at most)."""
        parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
        resolved: list[str] = []
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                resolved = resolved[:-1]
                continue
            candidate = self.root.joinpath(*resolved, name)
            if candidate.is_symlink() and (parts or follow):
                hops += 1
                if hops > 40:
                    raise GuestError(f"too many symlinks resolving {path}")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            resolved.append(name)
        return self.root.joinpath(*resolved)

    # -- the Guest interface the steps use -------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self._host(path).exists()

    def lexists(self, path: str) -> bool:
        p = self._host(path, follow=False)
        return p.exists() or p.is_symlink()

    def is_file(self, path: str) -> bool:
        p = self._host(path, follow=False)
        return p.is_file() and not p.is_symlink()

    def is_dir(self, path: str) -> bool:
        p = self._host(path, follow=False)
        return p.is_dir() and not p.is_symlink()

    def is_symlink(self, path: str) -> bool:
        return self._host(path, follow=False).is_symlink()

    def read(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8", "replace")

    def read_bytes(self, path: str) -> bytes:
        return self._host(path).read_bytes()

    def stat_mode(self, path: str) -> int | None:
        try:
            return self._host(path).stat().st_mode
        except (OSError, GuestError):
            return None

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        p = self._host(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode())
        if mode is not None:
            p.chmod(mode)

    def remove(self, path: str) -> bool:
        if self.lexists(path):
            self._host(path, follow=False).unlink()
            return True
        return False

    def remove_tree(self, path: str) -> None:
        p = self._host(path, follow=False)
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)

    def glob(self, pattern: str) -> list[str]:
        parent, leaf = posixpath.split(pattern)
        host = self._host(parent)
        if not host.is_dir():
            return []
        return sorted(posixpath.join(parent, n) for n in os.listdir(host) if fnmatch.fnmatch(n, leaf))

    def find_files(self, top: str) -> list[str]:
        host = self._host(top)
        if not host.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(host):
            for f in files:
                full = Path(dirpath) / f
                if full.is_file() and not full.is_symlink():
                    out.append("/" + str(full.relative_to(self.root)))
        return sorted(out)

    def truncate(self, path: str) -> None:
        self._host(path).write_bytes(b"")

    def filesize(self, path: str) -> int:
        return self._host(path).stat().st_size

    def ls(self, path: str) -> list[str]:
        return sorted(os.listdir(self._host(path)))

    def mkdir_p(self, path: str) -> None:
        self._host(path).mkdir(parents=True, exist_ok=True)

    def edit_lines(self, path: str, keep: object) -> int:
        lines = self.read(path).splitlines(keepends=True)
        kept = [ln for ln in lines if keep(ln)]  # type: ignore[operator]
        if len(kept) != len(lines):
            self._host(path).write_bytes("".join(kept).encode())
        return len(lines) - len(kept)

    def symlink(self, target: str, link: str) -> None:
        p = self._host(link, follow=False)
        if p.is_symlink() or p.exists():
            p.unlink()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)

    def download(self, path: str, dest: Path) -> None:
        shutil.copyfile(self._host(path), dest)

    def partition_problems(self) -> list[str]:
        return []  # a tree has no partitions: the libguestfs tier checks disk layouts

    def command(self, argv: list[str], *, purpose: str = "") -> str:
        raise GuestError(f"a directory guest runs no programs (wanted: {' '.join(argv)}): test this step in the "
                         "libguestfs tier")
