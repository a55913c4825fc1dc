"""``import_ratio``: the cold import of the handler over ``import boto3`` (see bench/README.md).

Import only: the cold start a user pays (imports, clients and the first invocation) is
``cold_start_ratio`` (``bench/coldstart.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.common import OUT_DIR, Metrics, log, metric
from bench.standins import ROOT

HANDLER_MODULE = "labeler.handlers.manifest_created"


def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """``-X importtime`` output → a forest of ``{"name", "self_us", "cum_us", "children"}`` (import order)."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|", 2)
        level = (len(name) - len(name.lstrip(" ")) - 1) // 2  # "| " then two spaces per nesting level
        node = {
            "name": name.strip(),
            "self_us": int(self_us),
            "cum_us": int(cum_us),
            "children": pending.pop(level + 1, []),
        }
        pending.setdefault(level, []).append(node)
    return pending.get(0, [])


def eager_imports(forest: list[dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    """Packages outside ``known`` (what ``import boto3`` loads anyway), each with its import cost and the
    chain of modules that pulled it in (the nearest ``labeler`` module first)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], chain: list[str]) -> None:
        name = node["name"]
        top = name.split(".")[0]
        if top not in known and top != "labeler" and not top.startswith("_") and top not in found:
            via = [module for module in chain if module.startswith("labeler")]
            found[top] = {
                "package": top,
                "first_module": name,
                "cumulative_ms": round(node["cum_us"] / 1000, 1),
                "imported_by": via[-1] if via else (chain[-1] if chain else "(top level)"),
                "chain": chain[-4:],
            }
        for child in node["children"]:
            walk(child, [*chain, name])

    for root in forest:
        walk(root, [])
    return sorted(found.values(), key=lambda item: -item["cumulative_ms"])


def _modules(forest: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    stack = list(forest)
    while stack:
        node = stack.pop()
        names.add(node["name"].split(".")[0])
        stack.extend(node["children"])
    return names


LAMBDA_VENV = OUT_DIR / "lambda-venv"


def lambda_package_python() -> tuple[str, str]:
    """A venv holding what the function's package holds: requirements.txt (what ``sam build`` packages)
    plus the runtime's boto3 (pinned as in requirements-dev.txt), and nothing else. Built once into
    ``bench/out/lambda-venv``; the project's code comes from ``src/`` on ``PYTHONPATH``.

    The development venv also holds moto, requests, mysql-connector, ...; X-Ray's ``patch_all``
    (Powertools' Tracer) imports and patches whatever of those it finds, which a Lambda would not have.
    Returns (python, note); falls back to the development venv when the venv cannot be built.
    """
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    pins = [line.strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()]
    boto3_pin = next((line for line in pins if line.startswith("boto3==")), "boto3")
    stamp_text = requirements + boto3_pin + sys.version
    python = LAMBDA_VENV / "bin" / "python"
    stamp = LAMBDA_VENV / ".bench-stamp"
    if python.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == stamp_text:
        return str(python), f"bench/out/lambda-venv: requirements.txt + {boto3_pin}"
    log("import: building bench/out/lambda-venv (requirements.txt + boto3, once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LAMBDA_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt"), boto3_pin],
            check=True,
            timeout=300,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"import: cannot build the Lambda-package venv ({exc}); measuring in the development venv")
        return sys.executable, "development venv (.venv): the Lambda-package venv could not be built"
    stamp.write_text(stamp_text, encoding="utf-8")
    return str(python), f"bench/out/lambda-venv: requirements.txt + {boto3_pin}"


def import_env(lambda_like: bool) -> dict[str, str]:
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    env.update(
        {
            "PYTHONPATH": str(ROOT / "src"),  # the package's code, as in the function's /var/task
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            # The function's environment as template.yaml sets it (the values do not matter at import).
            "OUTPUT_BUCKET": "bench-import",
            "POWERTOOLS_SERVICE_NAME": "s3-image-labeler",
            "POWERTOOLS_METRICS_NAMESPACE": "S3ImageLabeler",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
    )
    if lambda_like:
        # What the Lambda runtime sets: Powertools' Tracer is active there (Tracing: Active), off elsewhere.
        env.update(
            {
                "LAMBDA_TASK_ROOT": str(ROOT / "src"),
                "AWS_LAMBDA_FUNCTION_NAME": "s3-image-labeler-ManifestFunction",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            }
        )
    return env


def _import_seconds(python: str, module: str, env: dict[str, str]) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"`import {module}` failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _importtime(python: str, module: str, env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return parse_importtime(out.stderr)


def bench_import(runs: int) -> Metrics:
    package_python, package_note = lambda_package_python()
    variants: dict[str, dict[str, Any]] = {}
    setups = {
        "lambda_package": (package_python, True),
        "dev_venv_lambda_env": (sys.executable, True),
        "dev_venv_tracing_off": (sys.executable, False),
    }
    for name, (python, lambda_like) in setups.items():
        env = import_env(lambda_like)
        for module in ("boto3", HANDLER_MODULE):  # compile/warm the bytecode caches once, untimed
            _import_seconds(python, module, env)
        boto3_s, handler_s = [], []
        for _ in range(runs):  # interleaved, so that drift and load hit both alike
            boto3_s.append(_import_seconds(python, "boto3", env))
            handler_s.append(_import_seconds(python, HANDLER_MODULE, env))
        variants[name] = {
            "python": python,
            "lambda_env": lambda_like,
            "boto3_ms": [round(value * 1000, 1) for value in boto3_s],
            "handler_ms": [round(value * 1000, 1) for value in handler_s],
            "boto3_median_ms": round(statistics.median(boto3_s) * 1000, 1),
            "handler_median_ms": round(statistics.median(handler_s) * 1000, 1),
            "ratio": round(statistics.median(handler_s) / statistics.median(boto3_s), 3),
        }
        log(
            f"import ({name}): handler {variants[name]['handler_median_ms']} ms, "
            f"boto3 {variants[name]['boto3_median_ms']} ms"
        )
    built = _built_package_import(runs)
    if built is not None:
        variants["built_package"] = built
        log(f"import (built_package): handler {built['handler_median_ms']} ms, boto3 {built['boto3_median_ms']} ms")
    env = import_env(True)
    boto3_forest = _importtime(package_python, "boto3", env)
    handler_forest = _importtime(package_python, HANDLER_MODULE, env)
    eager = eager_imports(handler_forest, _modules(boto3_forest))
    main = variants.get("built_package") or variants["lambda_package"]
    where = (
        "the function package `make build` makes (.aws-sam/build/ManifestFunction: bytecode as shipped), "
        "Python 3.12 as in Lambda, `python -I -S -B`, the Lambda runtime's variables"
        if "built_package" in variants
        else package_note
    )
    return {
        "import_ratio": metric(
            main["ratio"],
            target=1.3,
            comparison="<=",
            unit="x",
            baseline=main["boto3_median_ms"],
            baseline_is="ms: median cold `import boto3` in a fresh interpreter (same package, same environment)",
            raw={
                "runs": runs,
                "handler_median_ms": main["handler_median_ms"],
                "measured_in": where,
                "venv": package_note,
                "method": "perf_counter around the import in `python -c`, a fresh interpreter each, "
                "interleaved, medians; one untimed warm-up each",
                "variants": variants,
                "handler_imports_not_in_boto3": eager[:12],
                "slowest_labeler_imports": _slowest_labeler_modules(handler_forest)[:12],
            },
            note="value: the Lambda package's modules with the Lambda runtime's environment (Tracer active)",
        )
    }


def lambda_python() -> str | None:
    """Python 3.12 (the Lambda runtime's version): $LAMBDA_PYTHON, python3.12 on PATH, or pyenv's newest 3.12."""
    import glob
    import shutil

    candidates = [os.environ.get("LAMBDA_PYTHON"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12.*/bin/python3.12")), reverse=True)
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def _built_package_import(runs: int) -> dict[str, Any] | None:
    """The cold import measured in the real function package (scripts/measure_cold_import.py), if it is built."""
    build_dir = ROOT / ".aws-sam" / "build" / "ManifestFunction"
    python = lambda_python()
    if not (build_dir / "labeler").is_dir() or python is None:
        log("import: no .aws-sam/build/ManifestFunction or no python3.12 (run `make build`); skipping that variant")
        return None
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "measure_cold_import.py"), str(build_dir), python, "--runs", str(runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout)
    return {
        "python": python,
        "lambda_env": True,
        "build_dir": str(build_dir.relative_to(ROOT)),
        "boto3_ms": found.get("baseline_ms"),
        "handler_ms": found.get("handler_ms"),
        "boto3_median_ms": found["baseline_median_ms"],
        "handler_median_ms": found["handler_median_ms"],
        "ratio": found["ratio"],
        "modules_compiled_from_source": found.get("handler_bytecode", {}).get("modules_compiled_from_source"),
    }


def _slowest_labeler_modules(forest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every non-labeler import made directly by a labeler module, by cumulative time."""
    found: list[dict[str, Any]] = []
    stack = list(forest)
    while stack:
        node = stack.pop()
        for child in node["children"]:
            if node["name"].startswith("labeler") and not child["name"].startswith("labeler"):
                found.append(
                    {
                        "importer": node["name"],
                        "module": child["name"],
                        "cumulative_ms": round(child["cum_us"] / 1000, 1),
                    }
                )
            stack.append(child)
    return sorted(found, key=lambda item: -item["cumulative_ms"])
