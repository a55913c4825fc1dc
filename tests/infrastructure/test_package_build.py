"""src/Makefile, run for real as `sam build` runs it: what the function's package holds, and that it loads
from bytecode alone.

Needs CPython 3.12 (the Lambda runtime's version; found as mk/infra.mk finds it: python3.12 on PATH,
else pyenv's newest 3.12.x) and the package index pip is configured with; skipped without python3.12.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.infrastructure.conftest import ROOT

HANDLERS = ("labeler.handlers.manifest_created", "labeler.handlers.work_batch")
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, check_source off


def find_python312() -> str | None:
    candidates = [os.environ.get("PY312_BIN", "") + "/python3.12", shutil.which("python3.12") or ""]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(path / "bin" / "python3.12") for path in sorted((pyenv_root / "versions").glob("3.12.*"))[::-1]]
    for candidate in candidates:
        if not candidate.startswith("/") or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.executable, sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.split()[-1] == "True":
            return probe.stdout.split()[0]
    return None


@pytest.fixture(scope="module")
def python312() -> str:
    python = find_python312()
    if python is None:
        pytest.skip("no CPython 3.12 here (the Lambda runtime's version)")
    return python


@pytest.fixture(scope="module")
def package(python312: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make build-ManifestFunction` from a scratch copy of src/, as sam build runs it."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    scratch = tmp_path_factory.mktemp("scratch")
    shutil.copytree(ROOT / "src", scratch / "src")
    artifacts = tmp_path_factory.mktemp("ManifestFunction")
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "LAMBDA_PYTHON"}}
    env.update(ARTIFACTS_DIR=str(artifacts), PATH=f"{Path(python312).parent}{os.pathsep}{env.get('PATH', '')}")
    out = subprocess.run(
        [make, "--makefile", str(scratch / "src" / "Makefile"), "build-ManifestFunction"],
        cwd=scratch / "src",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return artifacts


def pyc_flags(path: Path) -> int:
    flags: int = struct.unpack("<I", path.read_bytes()[4:8])[0]
    return flags


def lambda_like_python(python312: str, package: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """python -I -S -B with only the package on sys.path and the runtime's variables (no _X_AMZN_TRACE_ID)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LAMBDA_TASK_ROOT": str(package),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": "s3-image-labeler-test",
        "POWERTOOLS_SERVICE_NAME": "s3-image-labeler",
    }
    return subprocess.run(
        [python312, "-I", "-S", "-B", *args],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_package_holds_the_code_and_dependencies_but_nothing_local_only(package: Path) -> None:
    top = {path.name for path in package.iterdir()}
    assert {"labeler", "boto3", "botocore", "aws_lambda_powertools", "PIL", "urllib3", "json5", "ijson"} <= top
    assert not top & {"bin", "requirements.txt", "Makefile", "s3_image_labeler.egg-info", "tests"}
    assert not (package / "labeler" / "local").exists()
    assert not (package / "labeler" / "cli.py").exists()
    assert (package / "labeler" / "adapters" / "labels" / "taxonomy.json").is_file()  # data files come along
    shipped = {path.relative_to(package) for path in (package / "labeler").rglob("*.py")}
    source = {
        path.relative_to(ROOT / "src")
        for path in (ROOT / "src" / "labeler").rglob("*.py")
        if "local" not in path.relative_to(ROOT / "src" / "labeler").parts[:1] and path.name != "cli.py"
    }
    assert shipped == source


@pytest.mark.slow
def test_every_module_has_unchecked_hash_bytecode(package: Path) -> None:
    sources = list(package.rglob("*.py"))
    assert len(sources) > 500  # botocore, boto3, powertools, ... and labeler
    missing, wrong = [], []
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
        if not pyc.is_file():
            missing.append(str(source.relative_to(package)))
        elif pyc_flags(pyc) != UNCHECKED_HASH:
            wrong.append(str(pyc.relative_to(package)))
    assert not missing and not wrong, (missing[:10], wrong[:10])
    assert not [p for p in package.rglob("*.pyc") if not p.name.endswith(".cpython-312.pyc")]  # no other versions


@pytest.mark.slow
@pytest.mark.parametrize("module", HANDLERS)
def test_handlers_import_from_the_package_alone_and_from_bytecode_only(
    python312: str, package: Path, module: str
) -> None:
    code = (
        "import sys, importlib\n"
        f"sys.path.insert(0, {str(package)!r})\n"
        f"assert callable(importlib.import_module({module!r}).handler)\n"
        "stdlib = sys.base_prefix\n"
        "foreign = sorted({m.__name__ for m in list(sys.modules.values())\n"
        "    if getattr(m, '__file__', None) and not m.__file__.startswith((stdlib, sys.path[0]))})\n"
        "assert not foreign, foreign\n"
        "assert not [n for n in sys.modules if n.startswith(('labeler.local', 'labeler.cli'))]\n"
    )
    out = lambda_like_python(python312, package, "-v", "-c", code)
    assert out.returncode == 0, out.stderr[-3000:]
    compiled = [
        line for line in out.stderr.splitlines() if line.startswith("# code object from ") and line.endswith(".py")
    ]
    assert not compiled, compiled[:10]  # every module came from a .pyc, none was compiled at import
    used = [line for line in out.stderr.splitlines() if ".pyc matches " in line and f"{package}/labeler/" in line]
    assert len(used) >= 15
    # The bytecode names the file as it will be in Lambda (/var/task), not the build machine's path.
    pyc = package / "labeler" / "handlers" / "__pycache__" / f"{module.rsplit('.', 1)[1]}.cpython-312.pyc"
    assert b"/var/task/labeler/handlers/" in pyc.read_bytes()
    assert str(package).encode() not in pyc.read_bytes()
