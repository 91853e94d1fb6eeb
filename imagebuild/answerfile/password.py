"""The root password: read from a file or an environment variable, hashed with ``openssl passwd -6``
(given on stdin, never on argv); only the crypted hash is ever written into an answer file."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from ..errors import RecipeError
from ..events import NULL_REPORTER, Reporter
from ..recipe import Recipe, VMInstall
from ..run import run

CRYPT_HASH_RE = re.compile(r"^\$(5|6)\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43,86}$")
_MAX_PASSWORD_BYTES = 1024



def _leaf(recipe: Recipe) -> str | None:
    return recipe.sources[0] if recipe.sources else None


def root_password_source(vm: VMInstall) -> str:
    """Where the password comes from, for people (never the value)."""
    if vm.root_password_file:
        return f"file {vm.root_password_file}"
    return f"environment variable {vm.root_password_env}"


def read_root_password(recipe: Recipe, *, environ: Mapping[str, str] | None = None,
                       reporter: Reporter = NULL_REPORTER) -> str | None:
    """The root password from ``install.vm.root_password_file`` or, if unset, the environment variable.

    Returns None when neither gives one. Raises ``RecipeError`` for an unreadable file or a value that
    cannot be a password.
    """
    vm = recipe.install.vm
    env = os.environ if environ is None else environ
    if vm.root_password_file:
        key = "install.vm.root_password_file"
        path = Path(vm.root_password_file).expanduser()
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()[: _MAX_PASSWORD_BYTES + 2]
        except OSError as exc:
            raise RecipeError(f"cannot read the root password file: {exc.strerror}", file=_leaf(recipe),
                              key=key) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            reporter.info(f"warning: {path} (the root password) is readable by other users; chmod 600 it")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RecipeError("the root password file is not UTF-8 text", file=_leaf(recipe),
                              key=key) from None
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
        where = key
    else:
        value = env.get(vm.root_password_env, "")
        where = "install.vm.root_password_env"
        if not value:
            return None
    if not value:
        raise RecipeError("the root password is empty", file=_leaf(recipe), key=where)
    if len(value.encode()) > _MAX_PASSWORD_BYTES or any(c in value for c in "\n\r\x00"):
        raise RecipeError("the root password must be one line of at most 1024 bytes", file=_leaf(recipe),
                          key=where)
    return value


def hash_password(password: str, *, reporter: Reporter = NULL_REPORTER, salt: str | None = None) -> str:
    """SHA-512 crypt hash of ``password`` via ``openssl passwd -6``; the password goes in on stdin.

    ``salt`` (up to 16 of ``[./A-Za-z0-9]``) makes the hash reproducible; by default openssl picks one.
    """
    argv = ["openssl", "passwd", "-6"]
    if salt is not None:
        if not re.fullmatch(r"[./A-Za-z0-9]{1,16}", salt):
            raise ValueError("a crypt salt is 1-16 characters of [./A-Za-z0-9]")
        argv += ["-salt", salt]
    result = run(argv + ["-stdin"], reporter=reporter, input=password + "\n", secret=password,
                 log_output=False, timeout=60, purpose="hash the root password (SHA-512 crypt)")
    hashed = result.stdout.strip()
    if not CRYPT_HASH_RE.match(hashed):
        raise RecipeError("openssl passwd -6 did not return a SHA-512 crypt hash (is openssl >= 1.1.1?)")
    return hashed


