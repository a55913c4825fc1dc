"""docs/reference.md documents every setting, with the default the code has (the docs cannot drift)."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from labeler.models.settings import Settings

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"
# Set by Lambda itself, not by the template or the user: named in IMAGE_MEMORY_MB's row.
SET_BY_LAMBDA = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE"}
UNITS = {"GiB": 1024**3, "MiB": 1024**2}


def settings_rows() -> dict[str, str]:
    """``VARIABLE -> default cell`` from the Settings table (a row may name several variables)."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([A-Z0-9_]+)`", cells[0]):
            rows[name] = cells[1]
    return rows


def documented_value(cell: str) -> object:
    """The default as the table writes it: ``15728640``, ``1 GiB``, ``1,000,000``, ``true``, ``(none)`` …"""
    if cell.startswith("("):  # (required), (empty), (none), (template), (= LABEL_FEATURES): no value of its own
        return ""
    match = re.fullmatch(r"([\d,.]+)\s*(GiB|MiB)?", cell)
    if match:
        number = float(match.group(1).replace(",", "")) * UNITS.get(match.group(2) or "", 1)
        return number
    if cell.lower() in {"true", "false"}:
        return cell.lower() == "true"
    return cell


SETTINGS = [spec for spec in fields(Settings) if spec.name.upper() not in SET_BY_LAMBDA]


def test_the_table_is_read() -> None:
    assert len(settings_rows()) >= 20


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name.upper())
def test_every_setting_is_documented_with_its_default(spec: object) -> None:
    name = spec.name.upper()  # type: ignore[attr-defined]
    rows = settings_rows()
    assert name in rows, f"{name} is missing from docs/reference.md, Settings"
    default = spec.default  # type: ignore[attr-defined]
    documented = documented_value(rows[name])
    if default is MISSING:
        assert rows[name] == "(required)"
    elif isinstance(default, bool):
        assert documented == default
    elif isinstance(default, int | float):
        assert documented == pytest.approx(float(default)), f"{name}: the docs say {rows[name]!r}, the code {default}"
    else:
        assert documented == default, f"{name}: the docs say {rows[name]!r}, the code {default!r}"
