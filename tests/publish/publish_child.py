"""Run one publish in its own process, as `invoke publish` would: the tests interrupt and kill it.

usage: publish_child.py OUTPUT_DIR RECIPE_JSON TARGET [--cloud NAME] [--ovirt-config NAME]
                        [--rate BYTES_PER_S] [--events FILE] [--force]
Prints the result as JSON and, last, {"maxrss_kib": N}; exits with the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from imagebuild.errors import ImageBuildError
from imagebuild.events import Reporter
from imagebuild.publish import Options, publish
from imagebuild.recipe import Recipe
from imagebuild.run import signals_raise


def peak_rss_kib() -> int:
    """This process's peak resident memory. Not ru_maxrss: Linux carries the forking parent's peak
    (here pytest's) across exec into it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("output_dir")
    p.add_argument("recipe_json")
    p.add_argument("target")
    p.add_argument("--cloud")
    p.add_argument("--ovirt-config")
    p.add_argument("--rate", type=int)
    p.add_argument("--events")
    p.add_argument("--force", action="store_true")
    a = p.parse_args()
    recipe = Recipe.from_json(Path(a.recipe_json).read_text())
    reporter = Reporter(stream=sys.stderr)
    if a.events:
        reporter.attach(Path(a.events).with_suffix(".log"), Path(a.events))
    code = 0
    try:
        with signals_raise():
            result = publish(recipe, a.output_dir, to=a.target, force=a.force, reporter=reporter,
                             options=Options(cloud=a.cloud, ovirt_config=a.ovirt_config, rate_limit=a.rate))
        print(json.dumps(result.to_json()))
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    finally:
        reporter.close()
    print(json.dumps({"maxrss_kib": peak_rss_kib()}))
    return code


if __name__ == "__main__":
    sys.exit(main())
