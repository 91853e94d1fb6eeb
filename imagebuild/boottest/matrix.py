"""The boot matrix: which cells boot (firmware × machine, each with a seed and a disk bus), two at a time,
and the matrix's verdict, including what only several clones show (each made its own host keys)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..accel import AccelChoice
from ..domain import firmware_files
from ..errors import BootTestFailed
from ..events import CellReporter, Reporter
from ..recipe import Cell, Recipe, SeedKind
from ..workspace import destroy_domains
from .cell import CellPlan, boot_cell
from .results import BootTestResult, CellResult, Check


class _CellFailed(Exception):
    """A cell's checks failed (its result says how); only marks the cell's step as failed."""


def plan_cells(recipe: Recipe, cells: tuple[Cell, ...] | None = None,
               seed: SeedKind | None = None) -> list[CellPlan]:
    """The cells in matrix order, each with its seed and disk bus, both given in turn. A cloud image's
    seed kinds each get a cell: a matrix with fewer cells than kinds is walked again (a bios image's two
    cells carry nova and ovirt, then nocloud and none), never the whole cross-product. ``cells`` chosen
    by hand (``invoke boot-test --firmware``) boot once each, with ``seed`` or the seed the recipe's own
    matrix gives that cell."""
    buses = recipe.boot_test.disk_buses
    if cells is not None:
        own = {p.cell: p.seed for p in reversed(plan_cells(recipe))}  # a cell's first seed in the matrix
        pairs = [(c, (seed or own.get(c, SeedKind.NONE)) if recipe.cloud.enabled else SeedKind.NONE)
                 for c in cells]
    else:
        every = recipe.boot_test.cells(recipe.image.firmware)
        seeds = recipe.boot_test.seeds if recipe.cloud.enabled else (SeedKind.NONE,)
        pairs = [(every[i % len(every)], seeds[i % len(seeds)]) for i in range(max(len(every), len(seeds)))]
    repeated = Counter(c for c, _ in pairs)
    return [CellPlan(cell, s, buses[i % len(buses)], cell.slug if repeated[cell] == 1 else f"{cell.slug}-{s}")
            for i, (cell, s) in enumerate(pairs)]


def distinct_host_keys(results: list[CellResult]) -> Check | None:
    """Every clone made its own SSH host keys: no two cells booted with the same ed25519 fingerprint."""
    keys = {c.cell + (f" ({c.seed})" if c.seed != "none" else ""): c.facts.get("host_key")
            for c in results if c.facts.get("host_key")}
    if len(keys) < 2:
        return None
    same = len(set(keys.values())) < len(keys)
    return Check("distinct-host-keys", not same, f"{len(set(keys.values()))} different ed25519 host keys in "
                                                 f"{len(keys)} clones" + (f": {keys}" if same else ""))


def boot_test(image: Path, recipe: Recipe, *, accel: AccelChoice, work: Path, name: str, logs: Path,
              reporter: Reporter, cells: tuple[Cell, ...] | None = None, image_format: str = "qcow2",
              label: str = "", seed: SeedKind | None = None) -> BootTestResult:
    """Boot ``image`` (qcow2, or ``image_format``; ``label`` names it in lines, e.g. the artifact whose
    uncompressed disk it is) in each cell (default: the recipe's matrix); raise BootTestFailed naming
    every failed cell once all have run. Consoles (and a failed cell's screenshot, cloud-init log and
    seed) are written to ``logs``."""
    label = label or image.name
    plans = plan_cells(recipe, cells, seed)
    for plan in plans:
        firmware_files(plan.cell.firmware)  # a missing OVMF file is named before the first boot, not mid-matrix
    jobs = [(f"cell {i}/{len(plans)} {plan} ({plan.disk_bus})", plan) for i, plan in enumerate(plans, 1)]

    def one(title: str, plan: CellPlan, rep: Reporter, stop: threading.Event | None = None) -> CellResult:
        res = None
        with contextlib.suppress(_CellFailed), rep.step(title):
            res = boot_cell(image, recipe, plan, accel=accel, work=work, name=f"{name}-{plan.slug}",
                            image_format=image_format, label=label, logs=logs, reporter=rep, stop=stop)
            if not res.passed:
                raise _CellFailed  # the step shows ✗; the next cell still runs
        assert res is not None
        return res

    parallel = min(recipe.boot_test.parallel, len(jobs))
    if parallel <= 1:
        results = [one(title, plan, reporter) for title, plan in jobs]
    else:
        results = _side_by_side(jobs, one, parallel, name, reporter)
    matrix = [c for c in (distinct_host_keys(results),) if c is not None]
    result = BootTestResult(all(c.passed for c in results) and all(c.ok for c in matrix), str(accel.accel),
                            results, matrix)
    reporter.info("boot matrix: " + ", ".join(
        f"{c.cell}{' ' + c.seed if c.seed != 'none' else ''} {'passed' if c.passed else 'FAILED'}"
        + (f" (agent {c.seconds_to_agent:.0f}s)" if c.seconds_to_agent is not None else "") for c in results)
        + "".join(f"; {'✓' if m.ok else '✗'} {m.name}: {m.detail}" for m in matrix))
    if not result.passed:
        failed = "; ".join([f"{c.cell}: " + ", ".join(f"{k.name}: {k.detail}" for k in c.checks if not k.ok)
                            for c in results if not c.passed] + [f"{m.name}: {m.detail}" for m in matrix if not m.ok])
        raise BootTestFailed(f"boot test of {label} failed in {sum(not c.passed for c in results)} of "
                             f"{len(results)} cell(s): {failed}", result=result)
    return result


def _side_by_side(jobs: list[tuple[str, CellPlan]], one: Callable[..., CellResult], parallel: int,
                  name: str, reporter: Reporter) -> list[CellResult]:
    """Boot ``parallel`` cells at a time, each guest its own domain, overlay, MAC, seed and VARS copy, each
    reporting with its cell's tag; results in matrix order. An interrupt stops every cell of this boot
    test before it is re-raised: no cell starts a guest any more, and every domain of the test is
    destroyed until the workers are done (a cell still writing its seed when the interrupt came defines
    its domain after the first sweep), so the workers' calls fail and each removes its overlay."""
    reporter.info(f"booting {parallel} cells at a time")
    stop = threading.Event()
    pool = cf.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="boot-cell")
    tags = [str(plan.cell) if plan.slug == plan.cell.slug else plan.slug for _, plan in jobs]
    futures = [pool.submit(one, title, plan, CellReporter(reporter, tag), stop)
               for (title, plan), tag in zip(jobs, tags, strict=True)]
    try:
        while not all(f.done() for f in futures):
            cf.wait(futures, timeout=0.5)  # in Python, so a signal is handled at once
    except BaseException:
        stop.set()
        for f in futures:
            f.cancel()
        while True:  # the last sweep after every worker is done
            destroy_domains(name, reporter)
            if all(f.done() for f in futures):
                break
            cf.wait(futures, timeout=1)
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]
