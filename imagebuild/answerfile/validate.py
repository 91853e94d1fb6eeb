"""The recipe-facing entry points: ``validate_recipe`` (``invoke validate`` and the start of a build)
and ``prepare_answer_file`` (what the install stage calls to get the real file, password hashed)."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import RecipeError
from ..events import NULL_REPORTER, Reporter
from ..recipe import Backend, Recipe
from ..run import require_tools
from .lint import check_answer_file
from .password import hash_password, read_root_password, root_password_source
from .render import RenderedAnswerFile, _leaf, render_answer_file


def validate_recipe(recipe: Recipe, reporter: Reporter = NULL_REPORTER, *, for_build: bool = False,
                    mirrors: Mapping[str, str] | None = None,
                    environ: Mapping[str, str] | None = None) -> None:
    """Everything about the install that can be checked before a download or a VM starts.

    Renders the answer file (with a placeholder password hash), parses it for the target's syntax and
    lints it; raises ``AnswerFileError`` (a ``RecipeError``) listing every problem. A no-op for
    bootstrap recipes. ``for_build=True`` (the start of a build) also requires the root password to be
    available and the installer kernel and initrd to be pinned; ``invoke validate`` only warns.
    """
    if recipe.install.backend is not Backend.VM or recipe.abstract:
        return
    vm = recipe.install.vm
    problems: list[str] = []
    # An ISO is pinned as a whole (the kernel and initrd are read out of it); a tree, file by file.
    for key in ("iso_sha256",) if vm.iso_url else ("kernel_sha256", "initrd_sha256"):
        if not getattr(vm, key) and vm.media_trust == "signed":
            continue  # the archive's signed index supplies the hash (checked before any download)
        if not getattr(vm, key) and vm.media_trust == "first-use":
            problems.append(f"install.vm.{key} is not pinned: the media will be trusted on first use and "
                            "held to that hash afterwards (install.vm.media_trust = 'first-use')")
        elif not getattr(vm, key):
            msg = (f"install.vm.{key} is not pinned: a build boots only pinned media (run the media pin "
                   "helper, verify the values and write them into the recipe)")
            if for_build:
                raise RecipeError(msg.split(": ", 1)[1], file=_leaf(recipe), key=f"install.vm.{key}")
            problems.append(msg)
    try:
        password = read_root_password(recipe, environ=environ, reporter=reporter)
    except RecipeError as exc:
        if for_build:
            raise
        password = ""
        problems.append(str(exc))
    if password is None:
        msg = f"no root password: set {root_password_source(vm)}"
        if for_build:
            raise RecipeError(msg, file=_leaf(recipe), key="install.vm.root_password_env")
        problems.append(msg + " before building")
    if for_build:
        require_tools({"openssl": "hash the root password (openssl passwd -6)"})
    rendered = render_answer_file(recipe, mirrors=mirrors)
    warned = check_answer_file(rendered, required_packages=recipe.all_packages)
    reporter.info(f"answer file {rendered.name} from {vm.template}: {rendered.syntax} syntax and golden "
                  f"policy OK ({rendered.text.count(chr(10))} lines)")
    for w in warned:
        reporter.info(f"warning: {rendered.where(w.line)}: {w.message}")
    for p in problems:
        reporter.info(f"warning: {p}")


def prepare_answer_file(recipe: Recipe, reporter: Reporter = NULL_REPORTER, *,
                        mirrors: Mapping[str, str] | None = None,
                        environ: Mapping[str, str] | None = None,
                        salt: str | None = None) -> RenderedAnswerFile:
    """The real answer file for a build: password read and hashed, rendered, parsed and linted.

    The hash gets a random salt unless ``salt`` is given, so the text differs from build to build;
    a stage cache key should use ``redacted()`` (or pass a stable salt).
    """
    vm = recipe.install.vm
    password = read_root_password(recipe, environ=environ, reporter=reporter)
    if password is None:
        raise RecipeError(f"no root password: set {root_password_source(vm)}", file=_leaf(recipe),
                          key="install.vm.root_password_env")
    hashed = hash_password(password, reporter=reporter, salt=salt)
    del password
    rendered = render_answer_file(recipe, root_password_hash=hashed, mirrors=mirrors)
    for w in check_answer_file(rendered, required_packages=recipe.all_packages):
        reporter.info(f"warning: {rendered.where(w.line)}: {w.message}")
    reporter.log(f"answer file {rendered.name} rendered from {vm.template} (sha256 {rendered.sha256})")
    return rendered
