"""What a VM install would do, as plain data for ``invoke show`` and the manifest: pure (no network,
no password, no files written), so it can be printed for any recipe on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

from ..answerfile import (
    ANSWER_FILE_NAME,
    COMPLETION_MARKER,
    SERIAL_CONSOLE,
    AnswerFileKind,
    answer_file_kind,
    kickstart_syntax,
    rewrite_url,
    root_password_source,
)
from ..errors import RecipeError
from ..recipe import Backend, Recipe
from .media import boot_file_paths, tree_index

# anaconda streams its logs to this virtio-serial port when the guest has one (lorax does the same).
ANACONDA_LOG_PORT = "org.fedoraproject.anaconda.log.0"


def kernel_arguments(recipe: Recipe, *, mirrors: Mapping[str, str] | None = None) -> list[str]:
    """The installer's kernel command line; the answer file is injected at the initrd's root."""
    kind = answer_file_kind(recipe)
    name = ANSWER_FILE_NAME[kind]
    if kind is AnswerFileKind.KICKSTART:
        # From an ISO, anaconda finds its stage2 and packages on the attached CD-ROM.
        repo = "cdrom" if recipe.install.vm.iso_url else rewrite_url(recipe.install.vm.tree_url, mirrors)
        args = [f"inst.ks=file:/{name}", f"inst.repo={repo}", "inst.text", "inst.cmdline",
                f"console={SERIAL_CONSOLE}"]
    else:
        args = ["auto=true", "priority=critical", f"preseed/file=/{name}", f"console={SERIAL_CONSOLE}"]
    return args + list(recipe.install.vm.kernel_args)


def describe_vm_install(recipe: Recipe, *, mirrors: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resolved plan of a VM install: exact kernel, initrd and arguments it would boot, and limits."""
    if recipe.install.backend is not Backend.VM:
        raise RecipeError("not a VM-install recipe", file=recipe.sources[0] if recipe.sources else None,
                          key="install.backend")
    vm = recipe.install.vm
    kind = answer_file_kind(recipe)
    kernel_path, initrd_path = boot_file_paths(recipe)
    args = kernel_arguments(recipe, mirrors=mirrors)
    if vm.iso_url:
        iso = rewrite_url(vm.iso_url, mirrors)
        source: dict[str, Any] = {
            "iso_url": iso, "iso_sha256": vm.iso_sha256 or None, "cdrom": iso,
            "kernel": {"path": kernel_path, "from": "the ISO"},
            "initrd": {"path": initrd_path, "from": "the ISO"},
            "pinned": bool(vm.iso_sha256),
            "checksums_cross_checked_with": vm.iso_checksums_url or None,
        }
    else:
        tree = rewrite_url(vm.tree_url, mirrors)
        tree = tree if tree.endswith("/") else tree + "/"
        source = {
            "tree_url": tree,
            "kernel": {"path": kernel_path, "url": urljoin(tree, kernel_path), "sha256": vm.kernel_sha256 or None},
            "initrd": {"path": initrd_path, "url": urljoin(tree, initrd_path), "sha256": vm.initrd_sha256 or None},
            "pinned": bool(vm.kernel_sha256 and vm.initrd_sha256),
            "checksums_cross_checked_with": tree_index(recipe),
        }
    return {
        "backend": str(Backend.VM),
        **source,
        "kernel_args": args,
        "cmdline": " ".join(args),
        "answer_file": {
            "kind": str(kind),
            "name": ANSWER_FILE_NAME[kind],
            "template": vm.template,
            "syntax": kickstart_syntax(recipe) if kind is AnswerFileKind.KICKSTART else "preseed",
            "injected_at": f"/{ANSWER_FILE_NAME[kind]} (initrd root)",
        },
        "root_password_from": root_password_source(vm),
        "memory_mib": vm.memory_mib,
        "vcpus": vm.vcpus,
        "inactivity_seconds": vm.inactivity_seconds,
        "timeout_seconds": vm.timeout_seconds,
        "completion_marker": COMPLETION_MARKER,
        "serial_console": SERIAL_CONSOLE,
        "log_port": ANACONDA_LOG_PORT if kind is AnswerFileKind.KICKSTART else None,
    }
