"""taxonomy.json, the table that turns ImageNet's 1000 classes into Rekognition-style labels.

Pure data checks: no model, no numpy. The backend relies on every one of these invariants
(labeler/adapters/labels/local.py, step 3): a parent is summed over a superset of its children's
classes only if Parents are closed, and every parent must be a label of its own.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import pytest

from labeler.adapters.labels.faces import FACE_LABEL_PARENTS, PERSON
from labeler.adapters.labels.local import NUM_CLASSES, load_taxonomy, taxonomy_from_document

SMALL_WORDS = {
    "a",
    "an",
    "and",
    "as",
    "at",
    "by",
    "de",
    "des",
    "for",
    "in",
    "of",
    "on",
    "or",
    "the",
    "to",
    "with",
    "o'",
}
FIELDS = ("Parents", "Aliases", "Categories")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    text = resources.files("labeler.adapters.labels").joinpath("taxonomy.json").read_text(encoding="utf-8")
    return json.loads(text)


@pytest.fixture(scope="module")
def entries(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every label (concepts and class names) with its fields, as the backend builds them."""
    table = dict(document["concepts"])
    for entry in document["classes"]:
        table.setdefault(entry["Name"], entry)
    return table


def is_title_case(name: str) -> bool:
    """'Tabby Cat', 'Bird of Prey', "Jack-o'-Lantern", 'iPod' (a word with its own capitals stays)."""
    words = re.split(r"[ \-]", name)
    for position, word in enumerate(words):
        if not word:
            return False
        if word[0].isupper() or word[0].isdigit() or any(char.isupper() for char in word[1:]):
            continue
        if position and word in SMALL_WORDS:
            continue
        return False
    return True


def test_document_is_well_formed(document: dict[str, Any]) -> None:
    assert set(document) >= {"version", "generator", "sources", "concepts", "classes"}
    assert isinstance(document["version"], int) and document["version"] >= 1
    assert document["concepts"], "no concepts"
    for name, concept in document["concepts"].items():
        assert isinstance(name, str) and name.strip() == name and name
        assert set(concept) == set(FIELDS), name
        for key in FIELDS:
            assert isinstance(concept[key], list) and all(isinstance(item, str) and item for item in concept[key])
    for entry in document["classes"]:
        assert set(entry) >= {"index", "wnid", "Name", *FIELDS}, entry
        assert re.fullmatch(r"n\d{8}", entry["wnid"]), entry
        for key in FIELDS:
            assert isinstance(entry[key], list) and all(isinstance(item, str) and item for item in entry[key])


def test_all_1000_classes_are_mapped_in_index_order(document: dict[str, Any]) -> None:
    classes = document["classes"]
    assert [entry["index"] for entry in classes] == list(range(NUM_CLASSES))
    assert all(isinstance(entry["Name"], str) and entry["Name"].strip() for entry in classes)
    assert len({entry["wnid"] for entry in classes}) == NUM_CLASSES, "two classes share a WordNet id"
    # Every class lands in at least one category (Rekognition's label categories).
    assert all(entry["Categories"] for entry in classes)


def test_every_parent_is_a_concept_and_parents_are_closed(
    document: dict[str, Any], entries: dict[str, dict[str, Any]]
) -> None:
    concepts = document["concepts"]
    for name, entry in entries.items():
        parents = entry["Parents"]
        assert len(parents) == len(set(parents)), f"{name}: duplicate parents {parents}"
        assert name not in parents, f"{name} is its own parent"
        for parent in parents:
            assert parent in concepts, f"{name}: parent {parent!r} is not a concept"
            missing = set(concepts[parent]["Parents"]) - set(parents)
            assert not missing, f"{name}: not closed, {parent} brings {sorted(missing)}"


def test_parents_are_acyclic(entries: dict[str, dict[str, Any]]) -> None:
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"cycle: {' -> '.join([*path, name])}"
        state[name] = "open"
        for parent in entries[name]["Parents"]:
            visit(parent, [*path, name])
        state[name] = "done"

    for name in entries:
        visit(name, [])


def test_names_aliases_and_categories_are_title_case(entries: dict[str, dict[str, Any]]) -> None:
    bad = sorted(name for name in entries if not is_title_case(name))
    assert not bad, f"not title case: {bad}"
    for key in ("Aliases", "Categories"):
        bad = sorted({item for entry in entries.values() for item in entry[key] if not is_title_case(item)})
        assert not bad, f"{key} not title case: {bad}"


def test_classes_sharing_a_name_share_their_fields(document: dict[str, Any]) -> None:
    first: dict[str, dict[str, Any]] = {}
    for entry in document["classes"]:
        previous = first.setdefault(entry["Name"], entry)
        for key in FIELDS:
            assert previous[key] == entry[key], f"classes named {entry['Name']!r} disagree on {key}"
        if entry["Name"] in document["concepts"]:  # a class named like a concept takes its fields
            assert entry["Parents"] == document["concepts"][entry["Name"]]["Parents"], entry["Name"]


def test_the_backend_table_matches_the_document(document: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    taxonomy = taxonomy_from_document(document)
    assert taxonomy.names == tuple(sorted(entries))
    assert len(taxonomy.class_labels) == NUM_CLASSES
    position = {name: index for index, name in enumerate(taxonomy.names)}
    for entry in document["classes"]:
        expected = {position[entry["Name"]], *(position[parent] for parent in entries[entry["Name"]]["Parents"])}
        assert set(taxonomy.class_labels[entry["index"]]) == expected
    assert load_taxonomy() == taxonomy
    assert taxonomy.model_version == f"local-efficientnet-lite0-imagenet-{document['version']}"


def test_the_face_labels_fit_the_taxonomy(document: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """The face detector adds Person (a concept), Head and Face: their Parents must be closed too."""
    concepts = document["concepts"]
    assert PERSON in concepts and concepts[PERSON]["Parents"] == []
    for name, parents in FACE_LABEL_PARENTS.items():
        assert is_title_case(name)
        for parent in parents:
            assert parent in concepts or parent in FACE_LABEL_PARENTS, (name, parent)
            own = concepts[parent]["Parents"] if parent in concepts else FACE_LABEL_PARENTS[parent]
            assert set(own) <= set(parents), (name, parent)
        if name in entries:  # a future taxonomy concept must agree with the face detector
            assert tuple(entries[name]["Parents"]) == parents
