"""Preseed: our own parser of debconf's preseed format, then lint against the golden-image policy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .findings import Findings, Problem
from .password import CRYPT_HASH_RE
from .render import SERIAL_CONSOLE
from .shape import SHAPE_RULES
from .unrendered import find_leftovers
from .unrendered import message as leftover_message

PRESEED_RULES = {
    **SHAPE_RULES,
    "syntax": "every line is 'owner question type value' with a known type",
    "partman-method": "partman-auto/method is 'regular'",
    "partman-recipe": "an expert_recipe is given (the stock ones add swap)",
    "lvm": "no LVM or crypto",
    "raid": "no RAID",
    "swap": "no swap in the recipe",
    "mount-point": "'/' is the only mount point, defined once",
    "extra-partition": "no partition without a mount point",
    "no-root": "the recipe has '/'",
    "grow": "'/' grows to the end of the disk (max -1)",
    "no-swap-question": "partman-basicfilesystems/no_swap is false, so the installer does not ask",
    "no-poweroff": "poweroff at the end, without a final prompt",
    "rootpw": "a root password is given",
    "plaintext-rootpw": "the root password is crypted (passwd/root-password-crypted)",
    "rootpw-hash": "the crypted root password is a SHA-256/SHA-512 crypt hash",
    "plaintext-password": "user passwords are crypted",
    "network": "DHCP only",
    "serial-console": "the installed kernel gets console=ttyS0",
    "bootloader": "grub-installer/bootdev is preseeded",
    "packages": "the recipe's packages are in pkgsel/include",
}



# -- preseed ---------------------------------------------------------------------------------------

PRESEED_TYPES = frozenset({"string", "boolean", "select", "multiselect", "note", "password", "text",
                           "error", "title"})


@dataclass(frozen=True)
class PreseedEntry:
    owner: str
    question: str
    type: str
    value: str
    line: int


def parse_preseed(text: str) -> tuple[dict[str, PreseedEntry], Findings]:
    """debconf preseed format: ``owner question type value``; a trailing backslash continues a line."""
    entries: dict[str, PreseedEntry] = {}
    errors: list[Problem] = []
    warned: list[Problem] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        start = i + 1
        parts = [lines[i]]
        while parts[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            parts[-1] = parts[-1][:-1]
            parts.append(lines[i].strip())
        logical = " ".join(parts)  # joined once: repeated concatenation is quadratic in the continuations
        i += 1
        stripped = logical.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(None, 3)
        if len(parts) < 3:
            errors.append(Problem("syntax", "preseed syntax error: expected 'owner question type value'",
                                  start))
            continue
        owner, question, qtype = parts[:3]
        value = parts[3] if len(parts) == 4 else ""
        if qtype not in PRESEED_TYPES:
            errors.append(Problem("syntax", f"preseed syntax error: unknown type '{qtype}' (one of "
                                  + ", ".join(sorted(PRESEED_TYPES)) + ")", start))
            continue
        if qtype == "boolean" and value not in ("true", "false"):
            errors.append(Problem("syntax", f"preseed syntax error: {question} is a boolean, not '{value}'",
                                  start))
            continue
        if question in entries:
            warned.append(Problem("duplicate", f"{question} is set twice (line {entries[question].line} "
                                  "and here); the last one wins", start))
        entries[question] = PreseedEntry(owner, question, qtype, value, start)
    return entries, Findings(tuple(errors), tuple(warned))


@dataclass(frozen=True)
class PartmanPartition:
    min: str
    priority: str
    max: str
    fstype: str
    keys: dict[str, str]


def parse_expert_recipe(value: str) -> tuple[str, list[PartmanPartition]]:
    """partman's expert_recipe: ``name :: <min> <prio> <max> <fs> key{ value } ... . <next> .``"""
    name, sep, body = value.partition("::")
    if not sep:
        raise ValueError("an expert_recipe starts with '<name> ::'")
    partitions: list[PartmanPartition] = []
    tokens = body.split()
    if tokens and tokens[-1] != ".":
        tokens.append(".")  # the last partition's closing period is optional
    current: list[str] = []
    depth = 0
    for tok in tokens:
        if tok == "." and depth == 0:
            if current:
                partitions.append(_partman_partition(current))
            current = []
            continue
        depth += tok.count("{") - tok.count("}")
        current.append(tok)
    return name.strip(), partitions


def _partman_partition(tokens: list[str]) -> PartmanPartition:
    if len(tokens) < 4:
        raise ValueError(f"a partition needs '<min> <priority> <max> <filesystem>' first: {' '.join(tokens)}")
    keys: dict[str, str] = {}
    for m in re.finditer(r"(\$?[\w/.-]+)\{([^}]*)\}", " ".join(tokens[4:])):
        keys[m.group(1)] = m.group(2).strip()
    return PartmanPartition(tokens[0], tokens[1], tokens[2], tokens[3], keys)


def lint_preseed(text: str, *, required_packages: Iterable[str] = ()) -> Findings:
    """Parse and check a preseed against the golden-image policy (docs/answer-files.md lists the rules)."""
    entries, parsed = parse_preseed(text)
    templated: set[int] = set()
    leftovers: list[Problem] = []
    for i, line in enumerate(text.split("\n"), 1):
        shell = "late_command" in line or "early_command" in line  # $var there is the shell's
        if left := find_leftovers(line, i, in_commands=not shell):
            templated.add(i)
            leftovers.append(Problem("unrendered-template", leftover_message(left), i))
    # A template line's own syntax errors are guesses about text that is not preseed.
    errors = leftovers + list(parsed.errors)

    def err(rule: str, message: str, entry: PreseedEntry | None = None) -> None:
        errors.append(Problem(rule, message, entry.line if entry else None))

    def get(question: str) -> PreseedEntry | None:
        return entries.get(question)

    # Storage: partman's recipe has exactly one partition, '/', that grows; no swap, no LVM.
    method = get("partman-auto/method")
    if method is None:
        err("partman-method", "partman-auto/method is not preseeded: set it to 'regular'")
    elif method.value in ("lvm", "crypto"):
        err("lvm", f"partman-auto/method '{method.value}' makes LVM volumes: LVM is not allowed; use "
            "'regular'", method)
    elif method.value != "regular":
        err("partman-method", f"partman-auto/method must be 'regular', not '{method.value}'", method)
    recipe = get("partman-auto/expert_recipe")
    if recipe is None:
        choose = get("partman-auto/choose_recipe")
        err("partman-recipe", "no partman-auto/expert_recipe: the stock recipes add swap (and /home, /var); "
            "give one with only '/'", choose)
    else:
        try:
            _, parts = parse_expert_recipe(recipe.value)
        except ValueError as exc:
            err("partman-recipe", f"partman-auto/expert_recipe does not parse: {exc}", recipe)
            parts = []
        roots = []
        for part in parts:
            method_key = part.keys.get("method", "")
            mountpoint = part.keys.get("mountpoint")
            if method_key == "swap" or part.fstype == "linux-swap":
                err("swap", "swap is not allowed: the partman recipe has a swap partition", recipe)
            elif method_key in ("lvm",) or "lv_name" in part.keys or part.fstype == "lvm":
                err("lvm", "LVM is not allowed: the partman recipe has an LVM volume", recipe)
            elif method_key in ("raid", "crypto"):
                err("lvm" if method_key == "crypto" else "raid",
                    f"method{{ {method_key} }} is not allowed in the partman recipe", recipe)
            elif mountpoint == "/":
                roots.append(part)
            elif mountpoint:
                err("mount-point", f"the partman recipe adds a second mount point '{mountpoint}': golden "
                    "images have exactly one partition, '/'", recipe)
            else:
                err("extra-partition", f"the partman recipe adds a partition without a mount point "
                    f"(method{{ {method_key} }}): golden images have exactly one partition, '/'", recipe)
        if parts and not roots:
            err("no-root", "the partman recipe has no '/' partition (mountpoint{ / })", recipe)
        if len(roots) > 1:
            err("mount-point", "the partman recipe defines '/' more than once", recipe)
        if roots and roots[0].max not in ("-1",) and not (roots[0].max.isdigit()
                                                         and int(roots[0].max) >= 10**9):
            err("grow", "the / partition must grow to fill the disk: give it a maximum size of -1", recipe)
    no_swap = get("partman-basicfilesystems/no_swap")
    if no_swap is None or no_swap.value != "false":
        err("no-swap-question", "set 'partman-basicfilesystems/no_swap boolean false', else the installer "
            "stops to ask about the missing swap", no_swap)

    # The end of the install: the guest powers itself off without asking.
    poweroff = get("debian-installer/exit/poweroff")
    if poweroff is None or poweroff.value != "true":
        err("no-poweroff", "no poweroff at the end: set 'd-i debian-installer/exit/poweroff boolean true'",
            poweroff)
    halt = get("debian-installer/exit/halt")
    if halt is not None and halt.value == "true":
        err("no-poweroff", "debian-installer/exit/halt waits forever instead of powering off; remove it",
            halt)
    if get("finish-install/reboot_in_progress") is None:
        err("no-poweroff", "set 'd-i finish-install/reboot_in_progress note', else the installer waits for "
            "a key press before powering off")

    # Passwords: crypted hashes only.
    plaintext_root = False
    for q in ("passwd/root-password", "passwd/root-password-again"):
        if (e := get(q)) is not None and e.value:
            plaintext_root = True
            err("plaintext-rootpw", f"{q} is a plaintext root password: use passwd/root-password-crypted",
                e)
    for q in ("passwd/user-password", "passwd/user-password-again"):
        if (e := get(q)) is not None and e.value:
            err("plaintext-password", f"{q} is a plaintext password: use passwd/user-password-crypted", e)
    crypted = get("passwd/root-password-crypted")
    root_login = get("passwd/root-login")
    root_disabled = root_login is not None and root_login.value == "false"
    if crypted is None and not plaintext_root and not root_disabled:
        err("rootpw", "no root password: set 'd-i passwd/root-password-crypted password <hash>'")
    elif crypted is not None and not CRYPT_HASH_RE.match(crypted.value):
        err("rootpw-hash", "passwd/root-password-crypted is not a SHA-256/SHA-512 crypt hash ($5$... or "
            "$6$...)", crypted)

    # DHCP, serial console, bootloader target.
    autoconf = get("netcfg/disable_autoconfig")
    if (autoconf is not None and autoconf.value == "true") or get("netcfg/get_ipaddress") is not None:
        err("network", "a static address is preseeded: golden images get their address by DHCP",
            autoconf if autoconf is not None and autoconf.value == "true" else get("netcfg/get_ipaddress"))
    opts = get("debian-installer/add-kernel-opts")
    if opts is None or not re.search(r"(^|\s)console=ttyS0", opts.value):
        err("serial-console", "the installed system needs a serial console: set "
            f"'d-i debian-installer/add-kernel-opts string console=tty0 console={SERIAL_CONSOLE}'", opts)
    if get("grub-installer/bootdev") is None:
        err("bootloader", "grub-installer/bootdev is not preseeded: set it to the first disk (e.g. "
            "/dev/vda), else the installer asks")

    # Packages.
    include = get("pkgsel/include")
    have = set(include.value.replace(",", " ").split()) if include else set()
    for pkg in required_packages:
        if pkg not in have:
            err("packages", f"package '{pkg}' from the recipe is missing from pkgsel/include", include)

    # On a template line, what the parser and the password rules make of the placeholder is a guess.
    errors = [e for e in errors if e.rule == "unrendered-template" or e.line not in templated
              or e.rule not in ("syntax", "rootpw-hash", "plaintext-rootpw", "plaintext-password")]
    errors.sort(key=lambda p: (p.line is None, p.line or 0))
    return Findings(tuple(errors), parsed.warnings)


