"""Error classes: one per code, and back from a record's ``error`` object."""

from __future__ import annotations

import doctest

from labeler.models import errors as errors_module
from labeler.models.errors import ErrorCode, LabelerError


def test_error_records_round_trip_through_a_work_batch() -> None:
    # Rejected entries travel in work batches; the worker writes their records with the same error.
    from labeler.models.errors import DuplicateId, ManifestInvalid

    for error in (DuplicateId("dup", first_index=3), ManifestInvalid("bad", line=2)):
        again = LabelerError.from_dict(error.to_dict())
        assert type(again) is type(error) and again.to_dict() == error.to_dict()
    assert LabelerError.from_dict({"code": "no_such_code", "message": "m"}).to_dict()["code"] == "internal_error"


def test_every_code_has_its_class() -> None:
    for code in ErrorCode:
        assert str(LabelerError.from_dict({"code": str(code), "message": "m"}).code) == str(code)


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(errors_module).failed == 0


def test_every_code_is_documented_in_the_reference() -> None:
    from pathlib import Path

    reference = (Path(__file__).parents[2] / "docs" / "reference.md").read_text(encoding="utf-8")
    table = reference[reference.index("## Error codes") : reference.index("## Settings")]
    assert [code for code in ErrorCode if f"| `{code}` |" not in table] == []
