"""Cold import of a function's handler against ``import boto3``, in a built Lambda package.

    python scripts/measure_cold_import.py .aws-sam/build/ManifestFunction /path/to/python3.12

Each sample is a fresh ``python -I -S -B`` whose only package directory is the build directory (as
/var/task is in Lambda: no site-packages, no user site, no PYTHON* variables) with the variables the
Lambda runtime sets (``LAMBDA_TASK_ROOT``, ``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_REGION``, ...; no
``_X_AMZN_TRACE_ID``). ``-B`` stands in for the read-only /var/task: nothing compiled during a run is
written back, so every run is as cold as a Lambda cold start. The import is timed with
``perf_counter`` inside the child (interpreter start-up excluded). Handler and baseline runs are
interleaved, after one untimed warm-up of each (the OS page cache). One more untimed run with ``-v``
counts the modules compiled from source instead of loaded from bytecode.

Prints one JSON object: the medians in ms, their ratio (handler / baseline), every sample, and the
source-compiled counts. Standard library only; the build directory needs no write access.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODULE = "labeler.handlers.manifest_created"
BASELINE_MODULE = "boto3"

# What the Lambda runtime and template.yaml set (values do not matter at import, only presence).
# _X_AMZN_TRACE_ID is set per invocation, never at init: it is left out on purpose.
LAMBDA_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "OUTPUT_BUCKET": "measure-cold-import",
    "POWERTOOLS_SERVICE_NAME": "s3-image-labeler",
    "POWERTOOLS_METRICS_NAMESPACE": "S3ImageLabeler",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "LANG": "en_US.UTF-8",
    "TZ": ":UTC",
}

TIMED = (
    "import sys, time\n"
    "sys.path.insert(0, {root!r})\n"
    "t = time.perf_counter()\n"
    "import {module}\n"
    "print(time.perf_counter() - t)\n"
)
# python -v: "# code object from /x/y.py" (compiled from source; a .pyc is announced with quotes
# around its path) and "# /x/__pycache__/y.cpython-312.pyc matches /x/y.py" (bytecode used).
FROM_SOURCE = re.compile(r"^# code object from (/.+\.py)$", re.MULTILINE)
FROM_BYTECODE = re.compile(r"^# \S+\.pyc matches (/.+\.py)$", re.MULTILINE)


def child_env(build_dir: Path, function_name: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in ("PATH", "HOME", "TMPDIR") if name in os.environ}
    env.update(LAMBDA_ENV)
    env["LAMBDA_TASK_ROOT"] = str(build_dir)
    env["AWS_LAMBDA_FUNCTION_NAME"] = function_name
    return env


def run_child(
    python: str, build_dir: Path, module: str, env: dict[str, str], verbose: bool = False
) -> subprocess.CompletedProcess[str]:
    code = TIMED.format(root=str(build_dir), module=module)
    args = [python, "-I", "-S", "-B", *(["-v"] if verbose else []), "-c", code]
    out = subprocess.run(args, cwd=build_dir, env=env, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"`import {module}` failed in {build_dir}:\n{out.stderr[-3000:]}")
    return out


def import_seconds(python: str, build_dir: Path, module: str, env: dict[str, str]) -> float:
    return float(run_child(python, build_dir, module, env).stdout.strip().splitlines()[-1])


def bytecode_use(python: str, build_dir: Path, module: str, env: dict[str, str]) -> dict[str, Any]:
    """Which of the build directory's modules an import compiles from source, and how many use bytecode."""
    stderr = run_child(python, build_dir, module, env, verbose=True).stderr
    root = str(build_dir) + os.sep

    def inside(paths: list[str]) -> list[str]:
        return sorted(path[len(root) :] for path in paths if path.startswith(root))

    compiled = inside(FROM_SOURCE.findall(stderr))
    return {
        "modules_from_bytecode": len(inside(FROM_BYTECODE.findall(stderr))),
        "modules_compiled_from_source": len(compiled),
        "compiled_from_source": compiled[:50],
    }


def measure(build_dir: Path, python: str, module: str, runs: int, function_name: str) -> dict[str, Any]:
    env = child_env(build_dir, function_name)
    for name in (BASELINE_MODULE, module):  # untimed: the page cache, not the bytecode (-B)
        import_seconds(python, build_dir, name, env)
    baseline_s: list[float] = []
    handler_s: list[float] = []
    for index in range(runs):  # interleaved, alternating which goes first: drift hits both alike
        order = (BASELINE_MODULE, module) if index % 2 == 0 else (module, BASELINE_MODULE)
        for name in order:
            (baseline_s if name == BASELINE_MODULE else handler_s).append(import_seconds(python, build_dir, name, env))
    handler_median = statistics.median(handler_s)
    baseline_median = statistics.median(baseline_s)
    version = subprocess.run(
        [python, "-I", "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {
        "build_dir": str(build_dir),
        "python": python,
        "python_version": version,
        "module": module,
        "baseline": BASELINE_MODULE,
        "runs": runs,
        "handler_median_ms": round(handler_median * 1000, 2),
        "baseline_median_ms": round(baseline_median * 1000, 2),
        "ratio": round(handler_median / baseline_median, 3),
        "handler_ms": [round(value * 1000, 2) for value in handler_s],
        "baseline_ms": [round(value * 1000, 2) for value in baseline_s],
        "handler_bytecode": bytecode_use(python, build_dir, module, env),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "build_dir", type=Path, help="a function's build directory, e.g. .aws-sam/build/ManifestFunction"
    )
    parser.add_argument("python", help="the interpreter to run (the Lambda runtime's version: python3.12)")
    parser.add_argument("--module", default=DEFAULT_MODULE, help=f"the handler module (default {DEFAULT_MODULE})")
    parser.add_argument("--runs", type=int, default=9, help="fresh interpreters per module (default 9)")
    parser.add_argument("--function-name", default="s3-image-labeler-ManifestFunction")
    args = parser.parse_args(argv)
    build_dir = args.build_dir.resolve()
    if not (build_dir / args.module.split(".")[0]).exists():
        parser.error(f"{build_dir} does not hold {args.module.split('.')[0]}/: not a build directory?")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = measure(build_dir, args.python, args.module, args.runs, args.function_name)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
