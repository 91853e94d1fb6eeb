"""invoke tasks: thin. Parse flags, call the library, turn ImageBuildError into documented exit codes.

Exit codes: 0 ok · 1 other error · 2 bad recipe/answer file · 3 missing tool or host not ready ·
4 external command failed · 5 install failed · 6 generalization failed · 7 boot test failed ·
8 publish failed · 9 attestation failed · 128+N interrupted by signal N (130 SIGINT, 143 SIGTERM).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

from invoke import Exit, task

from imagebuild.errors import BuildInterrupted, ImageBuildError
from imagebuild.events import Reporter

HERE = Path(__file__).resolve().parent


def edge(fn):  # type: ignore[no-untyped-def]
    """The one place where library errors become messages and exit codes."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        from imagebuild.settings import Settings, configure
        try:
            configure(Settings.from_environ(os.environ))  # the environment, read once, here
            return fn(*args, **kwargs)
        except ImageBuildError as exc:
            print(f"imagebuild: error: {exc}", file=sys.stderr)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print("imagebuild: interrupted", file=sys.stderr)
            raise Exit(code=130) from None
    return wrapper


@task(help={"recipe": "recipe name (see `invoke list`) or path to a .toml",
            "no_boot_test": "skip the boot test (the manifest says so; publish then refuses)",
            "keep_work": "keep the scratch dir under work/ for debugging",
            "verbose": "stream the build log to the terminal",
            "publish": "after a successful build, publish to this target (glance or ovirt)",
            "cloud": "clouds.yaml entry for --publish glance",
            "no_cache": "read nothing from and write nothing to the caches (stages and packages)",
            "rebuild": "build this stage and those after it, reuse the ones before "
                       "(install, customize, sparsify, boot-test)",
            "offline": "fetch no InRelease: reuse the newest cached install of the recipe, and say so",
            "require_cached": "fail before any work unless these stages (comma-separated) are cached",
            "explain": "print every stage's key inputs"})
@edge
def build(c, recipe, no_boot_test=False, keep_work=False, verbose=False, publish=None, cloud=None,
          no_cache=False, rebuild="", offline=False, require_cached="", explain=False):
    """Build a recipe into output/RECIPE/: qcow2, manifest.json, SHA256SUMS, logs."""
    from imagebuild.pipeline import build as run_build
    from imagebuild.stagecache import CacheOptions
    opts = CacheOptions(use=not no_cache, rebuild=rebuild, offline=offline, explain=explain,
                        require=tuple(s for s in require_cached.replace(",", " ").split() if s))
    out = run_build(recipe, reporter=Reporter(verbose=verbose), run_boot_test=not no_boot_test,
                    keep_work=keep_work, cache=opts)
    print(out)
    if publish:
        from imagebuild.publish import publish as run_publish
        result = run_publish(recipe, out, to=publish, cloud=cloud, reporter=Reporter(verbose=verbose))
        print(json.dumps(result.to_json(), indent=2))


@task(help={"prune": "evict least recently used entries down to IMAGEBUILD_CACHE_MAX",
            "json_": "print JSON"})
@edge
def cache(c, prune=False, json_=False):
    """List the stage cache's entries (recipe, stage, key, size, last use); --prune trims it to its cap."""
    import time as _time

    from imagebuild.cache import StageCache
    from imagebuild.paths import cache_root
    from imagebuild.settings import current
    sc = StageCache(cache_root() / "stages", max_bytes=current().cache_max, reporter=Reporter())
    if prune:
        removed = sc.evict()
        print(f"pruned {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    rows = [{"recipe": e.meta.get("recipe"), "stage": e.stage, "key": e.key, "size": e.size,
             "build_id": e.meta.get("build_id"), "created": e.meta.get("created"),
             "last_used": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(e.meta.get("last_used", 0))),
             "boot_test": bool(e.meta.get("boot"))} for e in sc.entries()]
    if json_:
        print(json.dumps(rows, indent=2))
        return
    total = sum(e.size for e in sc.entries())
    for r in rows:
        print(f"{r['recipe']!s:16} {r['stage']!s:9} {str(r['key'])[:12]} {int(r['size'] or 0) / 2**20:7.0f} MiB"
              f"  built {r['created']}  used {r['last_used']}" + ("  +boot-test" if r["boot_test"] else ""))
    print(f"{len(rows)} entries, {total / 2**30:.2f} GiB of {current().cache_max / 2**30:.0f} GiB "
          f"({sc.root})")


@task(name="list", help={"all": "also list abstract base recipes",
                         "json_": "JSON for CI fan-out: buildable recipes with firmware and boot matrix"})
@edge
def list_(c, all=False, json_=False):
    """List the recipes (--json: the buildable ones with their firmware and boot-test matrix)."""
    from imagebuild.recipe import list_recipes, load_recipe, publish_firmware
    recipes = [load_recipe(name) for name in list_recipes()]
    if json_:
        print(json.dumps([
            {"recipe": r.name, "description": r.description, "backend": str(r.install.backend),
             "firmware": str(r.image.firmware), "machine_type": str(r.image.machine_type),
             "publish_firmware": str(publish_firmware(r)),
             "matrix": [str(cell) for cell in r.boot_test.cells(r.image.firmware)]}
            for r in recipes if not r.abstract], indent=2))
        return
    for r in recipes:
        if r.abstract and not all:
            continue
        base = f" (extends {r.extends})" if r.extends else ""
        kind = "abstract " if r.abstract else ""
        print(f"{r.name:22} {kind}{r.install.backend} {r.image.firmware}{base}: {r.description}")


@task(help={"recipe": "recipe name or path",
            "json_": "print the whole resolved recipe and plan as JSON instead of the summary",
            "offline": "do not fetch the suites' InRelease for the stage keys"})
@edge
def show(c, recipe, json_=False, offline=False):
    """Summarize the recipe and the stages a build would run, each with its cache key, without building."""
    from imagebuild.pipeline import validate
    from imagebuild.plan import make_plan
    from imagebuild.recipe import load_recipe
    from imagebuild.summary import render_summary
    r = load_recipe(recipe)
    plan = make_plan(r)
    if not r.abstract:
        validate(r)
        from imagebuild.stagecache import cache_status
        plan["cache"] = cache_status(r, offline=offline)
    print(json.dumps(plan, indent=2) if json_ else render_summary(r, plan))


@task(help={"recipe": "recipe name or path",
            "online": "also check the archive: suite, every package, the mirror (bootstrap recipes)"})
@edge
def validate(c, recipe, online=False):
    """Check a recipe (all its mistakes at once), its answer file and the host tools; --online: its archive too."""
    from imagebuild.pipeline import validate as run_validate
    from imagebuild.recipe import load_recipe
    r = load_recipe(recipe)
    run_validate(r, Reporter())
    if online:
        from imagebuild.preflight import preflight
        preflight(r, Reporter())
    print(f"{recipe}: ok")


@task(iterable=["more"],
      help={"files": "answer file(s), kickstart or preseed: one path, or several separated by commas or spaces",
            "more": "one more answer file (repeatable), e.g. for paths with commas or spaces",
            "kind": "kickstart or preseed (default: guessed from the name, then the content)",
            "syntax": "pykickstart syntax, e.g. RHEL7, RHEL9, RHEL10, F40 (default: #version= line, else guessed)",
            "policy": "golden (the golden-image rules) or none (syntax, encoding and templates only)",
            "format": "text, json (one object per finding) or sarif (SARIF 2.1.0 for code scanning)",
            "output": "write the report to this file instead of standard output"})
@edge
def lint(c, files, more=None, kind=None, syntax=None, policy="golden", format="text", output=None):
    """Lint any kickstart or preseed, no recipe needed. Exit 0 when clean (warnings allowed), 2 on errors."""
    from imagebuild.answerfile import AnswerFileKind
    from imagebuild.answerfile.lint import Policy, check_syntax, lint_file
    from imagebuild.answerfile.report import Format, render
    from imagebuild.errors import RecipeError

    def choice(enum, value, flag):  # type: ignore[no-untyped-def]
        try:
            return enum(value)
        except ValueError:
            raise RecipeError(f"'{value}' is not one of " + ", ".join(m.value for m in enum), key=flag) from None

    paths = files.replace(",", " ").split() + list(more or [])
    if not paths:
        raise RecipeError("name at least one answer file: invoke lint FILE [FILE...]", key="files")
    k = choice(AnswerFileKind, kind, "--kind") if kind else None
    s = check_syntax(syntax) if syntax else None
    results = [lint_file(p, kind=k, syntax=s, policy=choice(Policy, policy, "--policy")) for p in paths]
    fmt = choice(Format, format, "--format")
    text = render(results, fmt)
    if fmt is not Format.TEXT:  # the text report says what was guessed; machine formats keep stdout clean
        for r in results:
            for why in r.guesses:
                print(f"{r.name}: note: taken as {why}", file=sys.stderr)
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    if any(r.findings.errors for r in results):
        raise Exit(code=RecipeError.exit_code)


@task(help={"long": "also print each step's description (why, and what exactly)"})
def steps(c, long=False):
    """List the generalization steps (name, default, families, summary)."""
    import textwrap

    from imagebuild.customize import all_steps
    for s in all_steps():
        fam = ",".join(str(f) for f in s.families)
        print(f"{s.name:22} {'on ' if s.default else 'off'} {fam:10} {s.summary}")
        if long and s.description and s.description != s.summary:
            print(textwrap.fill(s.description, 100, initial_indent=" " * 4, subsequent_indent=" " * 4))


@task(help={"image": "a built qcow2 (beside its manifest.json) or a recipe name (its build in output/RECIPE/)",
            "key": "the public key to log in with (default: the first of ~/.ssh/id_*.pub)",
            "console": "also print the guest's serial console as it boots"})
@edge
def vm(c, image, key=None, console=False):
    """Boot a built image as a throwaway clone with your SSH key (NoCloud seed); Ctrl-C destroys it."""
    from imagebuild.accel import choose_accel
    from imagebuild.localvm import read_public_key, resolve_image, run_vm, ssh_identity
    from imagebuild.run import signals_raise
    from imagebuild.settings import current

    path, recipe = resolve_image(image, current().output)
    key_path, public = read_public_key(key, Path.home())  # a bad key is named before any VM starts
    rep = Reporter()
    try:
        with signals_raise():
            accel = choose_accel(rep)
            run_vm(path, recipe, public_key=public, accel=accel, reporter=rep, identity=ssh_identity(key_path),
                   console=console)
    except BuildInterrupted as exc:  # how a session ends: the guest, its overlay and seed are gone by now
        print(f"{signal.Signals(exc.signum).name}: the guest was destroyed and its clone removed")


@task(help={"image": "a build's output directory, the qcow2 in one, or a recipe name (its build in output/RECIPE/)",
            "key": "the public key to check signatures with (default: IMAGEBUILD_VERIFY_KEY, else the public "
                   "half of IMAGEBUILD_SIGNING_KEY)",
            "rebuild": "then build it again, cold, from the manifest's recipe and compare, byte for byte "
                       "(bootstrap builds; docs/reproducible.md)"})
@edge
def verify(c, image, key=None, rebuild=False):
    """Check a build (signatures, sums, both digests, statements, SBOMs); --rebuild: build it again, compare."""
    from imagebuild.verify import verify as run_verify
    verified = run_verify(image, key=key)
    print(verified.summary(), flush=True)
    if rebuild:
        from imagebuild.rebuild import rebuild_and_compare
        from imagebuild.run import signals_raise
        with signals_raise():
            print("  " + rebuild_and_compare(verified, reporter=Reporter()).line())
    else:
        print("  not checked: a rebuild from the recorded inputs (--rebuild)")


@task
def checks(c):
    """List the boot test's checks (name, kind, the cells they run in by seed, summary)."""
    from imagebuild.boottest import all_checks
    for k in all_checks():
        seeds = "all" if len(k.seeds) == 4 else ",".join(str(s) for s in k.seeds)
        print(f"{k.name:18} {k.kind:6} {seeds + (' 2nd boot' if k.second_boot else ''):24} {k.summary}")


@task
def docs(c):
    """Regenerate the README's lists of steps, checks and tasks from the code (a unit test checks they agree)."""
    from imagebuild.docgen import checks_table, environment_table, replace_sections, steps_table, tasks_table
    readme = HERE / "README.md"
    text = replace_sections(readme.read_text(), {"steps": steps_table, "tasks": lambda: tasks_table(TASKS),
                                                 "environment": environment_table, "checks": checks_table})
    readme.write_text(text)
    print(f"{readme}: steps and tasks regenerated")


@task(name="boot-test", help={"image": "a qcow2 (e.g. output/debian12/debian12.qcow2)",
                              "recipe": "recipe whose checks to run (default: from the image's manifest)",
                              "firmware": "run one cell: bios, uefi or secure-boot (with --machine)",
                              "seed": "the cloud-init seed that cell attaches: nova, ovirt, nocloud or none "
                                      "(default: the one the recipe's matrix gives it)",
                              "machine": "run one cell: pc or q35 (default: q35 for UEFI, else pc)"})
@edge
def boot_test(c, image, recipe=None, firmware=None, machine=None, seed=None):
    """Boot an image as a fresh clone in each cell of its matrix (or one cell) and run the checks inside it."""
    import tempfile

    from imagebuild.accel import choose_accel
    from imagebuild.boottest import boot_test as run_boot_test
    from imagebuild.errors import RecipeError
    from imagebuild.manifest import read_manifest
    from imagebuild.recipe import CLAIMED_CELLS, Cell, Recipe, SeedKind, load_recipe
    from imagebuild.run import signals_raise
    from imagebuild.workspace import create_work_dir, new_build_id, remove_tree

    path = Path(image)
    if not path.is_file():
        raise ImageBuildError(f"{path}: no such image")
    if recipe:
        r = load_recipe(recipe)
    else:
        data = read_manifest(path.parent)["recipe"]
        r = Recipe.from_json(json.dumps(data))
    cells = None
    if firmware or machine:
        fw = firmware or "bios"
        text = f"{fw}/{machine or ('pc' if fw == 'bios' else 'q35')}"
        try:
            cell = Cell.parse(text)
        except ValueError as exc:
            raise RecipeError(f"--firmware/--machine: {exc}") from None
        if (cell.firmware, cell.machine) not in CLAIMED_CELLS[r.image.firmware]:
            raise RecipeError(f"--firmware/--machine: {cell} cannot boot {r.name}, a {r.image.firmware} image")
        cells = (cell,)
    try:
        seed_kind = SeedKind(seed) if seed else None
    except ValueError:
        raise RecipeError(f"--seed: unknown seed '{seed}' (one of {', '.join(s.value for s in SeedKind)})") from None
    if seed_kind is not None and cells is None:
        raise RecipeError("--seed chooses the seed of one cell: name the cell with --firmware (and --machine)")
    rep = Reporter()
    with signals_raise():
        bid = new_build_id(f"{r.name}-boottest")
        work = create_work_dir(bid)
        try:
            accel = choose_accel(rep)
            rep.info(f"accelerator: {accel.accel} ({accel.reason})")
            logs = Path(tempfile.gettempdir()) / f"{bid}-logs"
            logs.mkdir()
            rep.info(f"consoles in {logs}")
            result = run_boot_test(path, r, accel=accel, work=work, name=f"imagebuild-{bid}", logs=logs,
                                   reporter=rep, cells=cells, seed=seed_kind)
            print(json.dumps(result.to_data(), indent=2))
        finally:
            remove_tree(work, rep)


@task
@edge
def clean(c):
    """Remove what dead or interrupted builds left behind (domains, scratch dirs, unfinished output)."""
    from imagebuild.clean import clean_stale
    from imagebuild.run import signals_raise
    with signals_raise():
        removed = clean_stale(Reporter())
    print(f"removed {len(removed)} leftover(s)")


@task(help={"tier": "fast (unit), guestfs, vm, build, publish, matrix (the other firmware builds), "
                    "or all (default: the CI suite, everything but matrix)",
            "args": "extra pytest arguments"})
def test(c, tier="default", args=""):
    """Run the test suite (the README's test command). Tiers select pytest markers."""
    markers = {"fast": "unit", "unit": "unit", "guestfs": "guestfs", "vm": "vm", "build": "build and not matrix",
               "publish": "publish", "matrix": "matrix", "all": "", "default": "not matrix"}
    if tier not in markers:
        raise Exit(f"unknown tier {tier!r}; one of {', '.join(markers)}", code=2)
    # always -m: it overrides pyproject's "-m unit", which makes a bare `pytest` the fast tier
    argv = [sys.executable, "-m", "pytest", "-m", markers[tier]]
    argv += args.split()
    os.chdir(HERE)
    os.execv(sys.executable, argv)


@task(help={"recipe": "recipe name or path; publishes its build in output/RECIPE/",
            "to": "where: glance or ovirt",
            "cloud": "glance: clouds.yaml entry (default: OS_CLOUD, then OS_* variables)",
            "ovirt_config": "ovirt: section of ovirt.conf (default: OVIRT_* variables)",
            "force": "publish although the boot test failed or did not run (recorded on the image)",
            "output": "the build's output folder (default: output/RECIPE/)",
            "limit_rate": "upload at most this many bytes per second (suffix K, M or G)",
            "verbose": "stream the log to the terminal"})
@edge
def publish(c, recipe, to="glance", cloud=None, ovirt_config=None, force=False, output=None,
            limit_rate=None, verbose=False):
    """Publish a boot-tested build to Glance or oVirt (idempotent: the same artifact is not re-sent)."""
    from imagebuild.publish import Options, parse_rate
    from imagebuild.publish import publish as run_publish
    result = run_publish(recipe, output, to=to, force=force, reporter=Reporter(verbose=verbose),
                         options=Options(cloud=cloud, ovirt_config=ovirt_config,
                                         rate_limit=parse_rate(limit_rate)))
    print(json.dumps(result.to_json(), indent=2))


@task(help={"recipe": "a VM-install recipe"})
@edge
def pin(c, recipe):
    """Download a VM recipe's installer kernel and initrd and print their sha256, to verify and pin."""
    from imagebuild.install.media import pin_boot_files
    from imagebuild.recipe import load_recipe
    pins = pin_boot_files(load_recipe(recipe), reporter=Reporter())
    print("\n".join(f'{k} = "{v}"' for k, v in pins.items()))


# every task of this file, for `invoke docs` (the README's task table)
TASKS = [obj for obj in list(globals().values()) if type(obj).__name__ == "Task"]
