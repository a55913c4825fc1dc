"""Label backends behind one interface; pick one by name (``LABEL_BACKEND``).

>>> backend = get_backend("rekognition")  # doctest: +SKIP
"""

from __future__ import annotations

from labeler.adapters.labels.base import DetectsWithOptions, GetsReady, LabelBackend, LabelResult

__all__ = ["DetectsWithOptions", "GetsReady", "LabelBackend", "LabelResult", "get_backend"]


def get_backend(name: str, **options: object) -> LabelBackend:
    """Build the backend called ``name`` (imported lazily: the local model pulls numpy/onnxruntime)."""
    if name == "rekognition":
        from labeler.adapters.labels.rekognition import RekognitionBackend

        return RekognitionBackend(**options)  # type: ignore[arg-type]
    if name == "local":
        from labeler.adapters.labels.local import LocalLabelBackend

        return LocalLabelBackend(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown label backend {name!r} (expected 'rekognition' or 'local')")
