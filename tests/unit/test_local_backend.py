"""The offline backend (LABEL_BACKEND=local) on the real model and real photographs.

The ``model`` tests need ``make model`` (``make test`` runs it first). Without the model they FAIL,
saying so: a skipped model test would hide a backend that cannot label anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from labeler.adapters.labels import LabelBackend, get_backend
from labeler.adapters.labels import faces as face_module
from labeler.adapters.labels.local import (
    MANIFEST_FILENAME,
    MODEL_FILENAME,
    LocalLabelBackend,
    ModelFiles,
    ModelNotAvailable,
    default_model_dir,
)
from labeler.models.errors import LabelingFailed
from tests.support.images import corrupt_png, jpeg, photo, png, truncated_jpeg
from tests.unit.test_taxonomy import is_title_case

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")
BOUNDING_BOX_KEYS = {"Width", "Height", "Left", "Top"}
LABEL_KEYS = {"Name", "Confidence", "Instances", "Parents", "Aliases", "Categories"}
FACE_LABELS = set(face_module.FACE_LABEL_PARENTS)


@pytest.fixture(scope="module")
def backend() -> LocalLabelBackend:
    """The backend (models load on first use, so a missing model FAILS each test with ModelNotAvailable's hint)."""
    return LocalLabelBackend()


def model_copy(tmp_path: Path) -> Path:
    """A private copy of the built model directory (to damage, or to load cold)."""
    source = default_model_dir()
    try:
        ModelFiles.at(source).verify()
        face_module.verify_model(face_module.model_path(source))
    except (ModelNotAvailable, face_module.FaceModelNotAvailable) as exc:
        pytest.fail(f"{exc}: run `make model`", pytrace=False)
    copy = tmp_path / "models"
    shutil.copytree(source, copy)
    return copy


def face_detector() -> face_module.FaceDetector:
    try:
        return face_module.FaceDetector.at(default_model_dir())
    except face_module.FaceModelNotAvailable as exc:
        pytest.fail(f"{exc}: run `make model`", pytrace=False)


def label(image: bytes, backend: LocalLabelBackend, min_confidence: float = 55, max_labels: int = 50) -> Any:
    return backend.detect_labels(image, min_confidence=min_confidence, max_labels=max_labels)


def by_name(labels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["Name"]: entry for entry in labels}


def names_of(items: list[dict[str, Any]]) -> list[str]:
    return [item["Name"] for item in items]


def assert_rekognition_label(entry: dict[str, Any]) -> None:
    """The shape of one Label in a DetectLabels response (boto3's documented types)."""
    assert set(entry) == LABEL_KEYS, entry
    name = entry["Name"]
    assert isinstance(name, str) and is_title_case(name), name
    assert isinstance(entry["Confidence"], float) and 0.0 <= entry["Confidence"] <= 100.0, entry
    assert isinstance(entry["Instances"], list)
    for instance in entry["Instances"]:
        assert set(instance) == {"BoundingBox", "Confidence"}, instance
        box = instance["BoundingBox"]
        assert set(box) == BOUNDING_BOX_KEYS, box
        assert all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in box.values()), box
        assert box["Left"] + box["Width"] <= 1.0 + 1e-6 and box["Top"] + box["Height"] <= 1.0 + 1e-6, box
        assert box["Width"] > 0 and box["Height"] > 0, box
        assert isinstance(instance["Confidence"], float) and 0.0 <= instance["Confidence"] <= 100.0
    for key in ("Parents", "Aliases", "Categories"):
        assert isinstance(entry[key], list), (key, entry)
        for item in entry[key]:
            assert set(item) == {"Name"} and isinstance(item["Name"], str) and item["Name"], (key, item)
    assert name not in names_of(entry["Parents"]), entry


# --- what the model says about real photos ------------------------------------------------------------
@pytest.mark.model
def test_chelsea_is_a_cat_with_rekognition_parents(backend: LocalLabelBackend) -> None:
    labels = by_name(label(jpeg("chelsea"), backend).labels)
    assert "Cat" in labels, sorted(labels)
    cat = labels["Cat"]
    assert cat["Confidence"] >= 55
    assert {"Animal", "Mammal", "Pet"} <= set(names_of(cat["Parents"]))
    for parent in ("Animal", "Mammal", "Pet"):  # each parent is also a label of its own, at least as confident
        assert labels[parent]["Confidence"] >= cat["Confidence"]
    assert not FACE_LABELS & set(labels), "a cat is not a person"


@pytest.mark.model
def test_coffee_is_espresso_or_coffee(backend: LocalLabelBackend) -> None:
    labels = by_name(label(jpeg("coffee"), backend).labels)
    assert {"Espresso", "Coffee"} & set(labels), sorted(labels)
    assert not FACE_LABELS & set(labels)


@pytest.mark.model
def test_png_and_jpeg_of_the_same_photo_agree(backend: LocalLabelBackend) -> None:
    from_png = by_name(label(png("chelsea"), backend).labels)
    assert "Cat" in from_png and from_png["Cat"]["Confidence"] >= 55


@pytest.mark.model
@pytest.mark.parametrize("name", SAMPLES)
def test_every_label_has_the_rekognition_shape(backend: LocalLabelBackend, name: str) -> None:
    result = label(jpeg(name), backend, min_confidence=0, max_labels=1000)
    assert result.labels, name
    for entry in result.labels:
        assert_rekognition_label(entry)
    assert len(names_of(result.labels)) == len(set(names_of(result.labels))), "duplicate labels"
    json.dumps(result.labels)  # plain JSON types only (the pipeline stores them as they are)


@pytest.mark.model
@pytest.mark.parametrize("name", SAMPLES)
def test_parents_are_labels_at_least_as_confident_as_their_children(backend: LocalLabelBackend, name: str) -> None:
    labels = by_name(label(jpeg(name), backend, min_confidence=0, max_labels=10_000).labels)
    for entry in labels.values():
        for parent in names_of(entry["Parents"]):
            assert parent in labels, f"{entry['Name']}: parent {parent} is not a label"
            assert labels[parent]["Confidence"] >= entry["Confidence"], (parent, entry["Name"])


@pytest.mark.model
def test_min_confidence_and_max_labels_are_honoured(backend: LocalLabelBackend) -> None:
    image = jpeg("chelsea")
    everything = label(image, backend, min_confidence=0, max_labels=10_000).labels
    confidences = [entry["Confidence"] for entry in everything]
    assert confidences == sorted(confidences, reverse=True), "most confident first"

    one = label(image, backend, max_labels=1).labels
    assert len(one) == 1 and one[0] == everything[0]

    five = label(image, backend, min_confidence=0, max_labels=5).labels
    assert five == everything[:5]

    at_least_70 = label(image, backend, min_confidence=70, max_labels=1000).labels
    assert at_least_70 == [entry for entry in everything if entry["Confidence"] >= 70]

    strict = label(image, backend, min_confidence=99, max_labels=1000).labels
    assert all(entry["Confidence"] >= 99 for entry in strict)  # may well be empty

    assert label(image, backend, max_labels=0).labels == []
    assert label(image, backend, min_confidence=100.5).labels == []


@pytest.mark.model
def test_output_is_deterministic(backend: LocalLabelBackend) -> None:
    for name in SAMPLES:
        first = label(jpeg(name), backend, min_confidence=0, max_labels=1000)
        second = label(jpeg(name), backend, min_confidence=0, max_labels=1000)
        assert first == second, name
    # A second backend object shares the loaded model and answers the same.
    assert LocalLabelBackend().detect_labels(jpeg("coffee"), min_confidence=55, max_labels=10) == label(
        jpeg("coffee"), backend, max_labels=10
    )


@pytest.mark.model
def test_result_names_the_backend_and_the_model(backend: LocalLabelBackend) -> None:
    result = label(jpeg("chelsea"), backend)
    assert result.backend == "local" == backend.name
    assert result.model_version == backend.model_version
    assert result.model_version.startswith("local-efficientnet-lite0-imagenet-")
    assert isinstance(backend, LabelBackend)
    assert isinstance(get_backend("local"), LocalLabelBackend)


@pytest.mark.model
def test_exif_orientation_is_applied(backend: LocalLabelBackend) -> None:
    """A phone photo stored sideways with an EXIF Orientation tag is labelled upright (the face is found)."""
    sideways = photo("astronaut").transpose(Image.Transpose.ROTATE_90)  # stored rotated 90° anticlockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    labels = by_name(label(buffer.getvalue(), backend).labels)
    assert "Person" in labels and len(labels["Person"]["Instances"]) == 1, sorted(labels)


@pytest.mark.model
@pytest.mark.parametrize("make_bytes", [truncated_jpeg, corrupt_png, lambda: b"not an image at all"])
def test_undecodable_images_fail_clearly(backend: LocalLabelBackend, make_bytes: Any) -> None:
    with pytest.raises(LabelingFailed, match="cannot decode"):
        label(make_bytes(), backend)


# --- faces ---------------------------------------------------------------------------------------------
@pytest.mark.model
def test_faces_are_on_when_litert_is_installed(backend: LocalLabelBackend) -> None:
    """requirements-local.txt installs ai-edge-litert, so the face detector runs (and says so)."""
    assert face_module.runtime_installed(), "ai-edge-litert is missing: pip install -r requirements-local.txt"
    assert backend.faces
    assert backend.model_version.endswith(f"+{face_module.FACE_MODEL_VERSION}")


@pytest.mark.model
def test_astronaut_is_a_person_with_one_face(backend: LocalLabelBackend) -> None:
    labels = by_name(label(jpeg("astronaut"), backend).labels)
    person = labels["Person"]
    assert person["Confidence"] >= 80
    assert len(person["Instances"]) == 1
    instance = person["Instances"][0]
    box = instance["BoundingBox"]
    # Eileen Collins' face: upper middle of the photo (measured Left 0.34, Top 0.14, 0.21 x 0.21).
    assert 0.25 < box["Left"] < 0.45 and 0.05 < box["Top"] < 0.25, box
    assert 0.1 < box["Width"] < 0.35 and 0.1 < box["Height"] < 0.35, box
    assert instance["Confidence"] == person["Confidence"]
    assert names_of(person["Categories"]) == ["Person Description"]
    assert names_of(labels["Face"]["Parents"]) == ["Head", "Person"]
    assert names_of(labels["Head"]["Parents"]) == ["Person"]
    assert labels["Face"]["Confidence"] <= labels["Head"]["Confidence"] <= person["Confidence"]
    assert names_of(label(jpeg("astronaut"), backend, max_labels=1).labels) == ["Person"]


@pytest.mark.model
@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])
def test_no_faces_where_there_are_none(backend: LocalLabelBackend, name: str) -> None:
    assert face_detector().detect(photo(name)) == []
    everything = label(jpeg(name), backend, min_confidence=0, max_labels=10_000).labels
    assert not {"Face", "Head"} & set(names_of(everything))
    assert not any(entry["Instances"] for entry in everything)
    assert by_name(everything)["Person"]["Confidence"] < 5  # only the classifier's person-like classes
    assert not FACE_LABELS & set(names_of(label(jpeg(name), backend, min_confidence=50).labels))


@pytest.mark.model
def test_face_instances_follow_min_confidence(backend: LocalLabelBackend) -> None:
    """Person at 93.5 % passes 90 but not 99; the label never outlives its boxes."""
    assert "Person" in names_of(label(jpeg("astronaut"), backend, min_confidence=90).labels)
    assert not FACE_LABELS & set(names_of(label(jpeg("astronaut"), backend, min_confidence=99).labels))


@pytest.mark.model
def test_faces_can_be_switched_off() -> None:
    backend = LocalLabelBackend(faces=False)
    result = backend.detect_labels(jpeg("astronaut"), min_confidence=0, max_labels=10_000)
    assert not any(entry["Instances"] for entry in result.labels)
    assert "Face" not in names_of(result.labels)
    assert "blazeface" not in result.model_version
    assert result.model_version.startswith("local-efficientnet-lite0-imagenet-")


def test_weighted_nms_merges_overlapping_boxes_and_keeps_the_rest() -> None:
    import numpy as np

    boxes = np.array(
        [
            [0.10, 0.10, 0.30, 0.30],  # face A, best
            [0.12, 0.10, 0.32, 0.30],  # face A again, shifted: merged into the first
            [0.60, 0.60, 0.80, 0.80],  # face B
        ]
    )
    scores = np.array([0.9, 0.6, 0.7])
    kept = face_module.weighted_nms(boxes, scores)
    assert [round(score, 6) for _, score in kept] == [0.9, 0.7]
    merged = (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5
    assert np.allclose(kept[0][0], merged) and np.allclose(kept[1][0], boxes[2])


def test_letterbox_is_undone_and_boxes_are_clipped() -> None:
    image = Image.new("RGB", (400, 200))  # wide: content is 192 x 96, 48 px of black above and below
    pixels, content = face_module.letterbox(image)
    assert pixels.shape == (1, 192, 192, 3) and float(pixels.min()) == -1.0
    assert content == (0.0, 0.25, 1.0, 0.5)
    import numpy as np

    faces = face_module.to_image_faces([(np.array([0.5, 0.25, 0.75, 0.5]), 0.8)], content)
    assert faces == [face_module.Face(0.5, 0.0, 0.25, 0.5, 0.8)]
    clipped = face_module.to_image_faces([(np.array([-0.1, 0.2, 0.1, 0.3]), 0.6)], content)
    assert clipped[0].left == 0.0 and clipped[0].top == 0.0 and clipped[0].width == pytest.approx(0.1)
    assert face_module.to_image_faces([(np.array([0.2, 0.0, 0.3, 0.2]), 0.6)], content) == []  # in the bar
    assert len(face_module.anchors()) == 2304


# --- concurrency ---------------------------------------------------------------------------------------
@pytest.mark.model
def test_concurrent_labelling_matches_sequential(backend: LocalLabelBackend) -> None:
    images = [jpeg(name) for name in SAMPLES] * 6
    sequential = [label(image, backend, min_confidence=0, max_labels=1000) for image in images]
    start = threading.Barrier(8)

    def work(image: bytes) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait(timeout=10)  # all 8 threads enter the models together
        return label(image, backend, min_confidence=0, max_labels=1000)

    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(work, images))
    assert concurrent == sequential


@pytest.mark.model
def test_first_use_from_many_threads_loads_once(tmp_path: Path) -> None:
    """Eight threads hitting a cold backend: one load, eight identical answers."""
    copy = model_copy(tmp_path)
    backend = LocalLabelBackend(model_dir=copy)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: label(jpeg("chelsea"), backend), range(8)))
    assert all(result == results[0] for result in results)
    assert "Cat" in names_of(results[0].labels)


# --- a missing or damaged model is an error that says what to do ----------------------------------------
def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    backend = LocalLabelBackend(model_dir=tmp_path / "nowhere", faces=False)
    with pytest.raises(ModelNotAvailable, match="make model") as caught:
        backend.detect_labels(jpeg("chelsea"), min_confidence=55, max_labels=10)
    assert isinstance(caught.value, LabelingFailed)
    with pytest.raises(ModelNotAvailable, match="make model"):
        backend.load()


@pytest.mark.model
@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "drop_manifest", "bad_manifest"])
def test_damaged_model_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    copy = model_copy(tmp_path)
    onnx, manifest = copy / MODEL_FILENAME, copy / MANIFEST_FILENAME
    if damage == "truncate":
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    elif damage == "flip_byte":
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
    elif damage == "drop_manifest":
        manifest.unlink()
    else:
        manifest.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelNotAvailable, match="make model"):
        LocalLabelBackend(model_dir=copy).detect_labels(jpeg("chelsea"), min_confidence=55, max_labels=10)


@pytest.mark.model
@pytest.mark.parametrize("damage", ["missing", "truncate"])
def test_missing_or_damaged_face_model_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    copy = model_copy(tmp_path)
    face_file = face_module.model_path(copy)
    if damage == "missing":
        face_file.unlink()
    else:
        face_file.write_bytes(face_file.read_bytes()[:1000])
    backend = LocalLabelBackend(model_dir=copy)
    assert backend.faces
    with pytest.raises(ModelNotAvailable, match="make model"):
        backend.detect_labels(jpeg("astronaut"), min_confidence=55, max_labels=10)
    # Explicitly without faces, the same directory still labels.
    assert LocalLabelBackend(model_dir=copy, faces=False).detect_labels(
        jpeg("chelsea"), min_confidence=55, max_labels=5
    )


# --- importing is free ------------------------------------------------------------------------------------
def test_importing_the_backend_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "import labeler.adapters.labels.local as local, labeler.adapters.labels.faces\n"
        "from labeler.adapters.labels import get_backend\n"
        "local.LocalLabelBackend(model_dir='/nonexistent')\n"
        "heavy = sorted({'onnxruntime', 'numpy', 'PIL', 'ai_edge_litert'} & set(sys.modules))\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "", f"imported at import time: {done.stdout.strip()}"
