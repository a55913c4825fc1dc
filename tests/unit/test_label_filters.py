"""GeneralLabels filters: each documented rule of labeler.logic.label_filters, on DetectLabels-shaped labels."""

from __future__ import annotations

import copy
from typing import Any

from labeler.logic.label_filters import apply_filters, filter_labels
from labeler.models.label_options import LabelOptions


def label(name: str, *categories: str, parents: tuple[str, ...] = (), aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "Name": name,
        "Confidence": 90.0,
        "Instances": [],
        "Parents": [{"Name": parent} for parent in parents],
        "Aliases": [{"Name": alias} for alias in aliases],
        "Categories": [{"Name": category} for category in categories],
    }


# An answer shaped like DetectLabels' for a photo of a woman with her cat.
LABELS = [
    label("Animal", "Animals and Pets"),
    label("Mammal", "Animals and Pets", parents=("Animal",)),
    label("Cat", "Animals and Pets", parents=("Mammal", "Animal", "Pet")),
    label("Pet", "Animals and Pets", parents=("Animal",)),
    label("Person", "Person Description", aliases=("Human",)),
    label("Face", "Person Description", parents=("Head", "Person")),
    label("Clothing", "Apparel and Accessories", aliases=("Apparel",)),
    label("Tartan", "Patterns and Shapes", "Apparel and Accessories", aliases=("Plaid",)),
]


def names(labels: list[dict[str, Any]]) -> list[str]:
    return [entry["Name"] for entry in labels]


def test_without_filters_every_label_is_kept_unchanged() -> None:
    before = copy.deepcopy(LABELS)
    kept = filter_labels(LABELS)
    assert kept == LABELS and all(a is b for a, b in zip(kept, LABELS, strict=True))
    assert before == LABELS  # never edited in place
    assert apply_filters(LABELS, LabelOptions()) == LABELS


def test_label_inclusion_keeps_only_the_named_labels() -> None:
    assert names(filter_labels(LABELS, include_labels=["Cat", "Person"])) == ["Cat", "Person"]


def test_category_inclusion_keeps_the_labels_of_those_categories() -> None:
    assert names(filter_labels(LABELS, include_categories=["Animals and Pets"])) == ["Animal", "Mammal", "Cat", "Pet"]


def test_label_and_category_inclusion_are_a_union() -> None:
    kept = filter_labels(LABELS, include_labels=["Person"], include_categories=["Animals and Pets"])
    assert names(kept) == ["Animal", "Mammal", "Cat", "Pet", "Person"]


def test_a_label_in_any_included_category_is_kept() -> None:
    """Tartan has two categories; including either one keeps it."""
    assert names(filter_labels(LABELS, include_categories=["Patterns and Shapes"])) == ["Tartan"]


def test_label_exclusion_drops_the_named_labels() -> None:
    assert names(filter_labels(LABELS, exclude_labels=["Cat", "Face"])) == [
        "Animal",
        "Mammal",
        "Pet",
        "Person",
        "Clothing",
        "Tartan",
    ]


def test_category_exclusion_drops_labels_with_any_excluded_category() -> None:
    kept = filter_labels(LABELS, exclude_categories=["Person Description", "Apparel and Accessories"])
    assert names(kept) == ["Animal", "Mammal", "Cat", "Pet"]  # Tartan goes too: one of its two categories


def test_exclusion_wins_over_inclusion() -> None:
    assert names(filter_labels(LABELS, include_labels=["Cat", "Person"], exclude_labels=["Cat"])) == ["Person"]
    kept = filter_labels(LABELS, include_categories=["Animals and Pets"], exclude_labels=["Mammal"])
    assert names(kept) == ["Animal", "Cat", "Pet"]
    kept = filter_labels(LABELS, include_labels=["Cat", "Person"], exclude_categories=["Animals and Pets"])
    assert names(kept) == ["Person"]


def test_names_match_exactly_case_included() -> None:
    assert filter_labels(LABELS, include_labels=["cat", "CAT", "Cat "]) == []
    assert names(filter_labels(LABELS, exclude_categories=["person description"])) == names(LABELS)


def test_aliases_are_not_names() -> None:
    assert filter_labels(LABELS, include_labels=["Human", "Plaid"]) == []
    assert names(filter_labels(LABELS, exclude_labels=["Apparel"])) == names(LABELS)


def test_parents_are_neither_added_nor_edited() -> None:
    """Including Cat does not bring its parents; a kept label keeps its full Parents list."""
    kept = filter_labels(LABELS, include_labels=["Cat"])
    assert names(kept) == ["Cat"]
    assert names(kept[0]["Parents"]) == ["Mammal", "Animal", "Pet"]
    # Excluding a parent label drops that label only, not its children, nor the child's mention of it.
    kept = filter_labels(LABELS, exclude_labels=["Animal"])
    assert "Cat" in names(kept) and "Animal" not in names(kept)
    assert "Animal" in names(next(entry for entry in kept if entry["Name"] == "Cat")["Parents"])


def test_order_is_preserved() -> None:
    reordered = list(reversed(LABELS))
    assert names(filter_labels(reordered, include_categories=["Animals and Pets"])) == [
        "Pet",
        "Cat",
        "Mammal",
        "Animal",
    ]


def test_labels_without_categories_only_match_by_name() -> None:
    bare = [{"Name": "Cat", "Confidence": 90.0}, {"Name": "Dog", "Confidence": 80.0, "Categories": []}]
    assert names(filter_labels(bare, include_categories=["Animals and Pets"])) == []
    assert names(filter_labels(bare, exclude_categories=["Animals and Pets"])) == ["Cat", "Dog"]
    assert names(filter_labels(bare, include_labels=["Dog"])) == ["Dog"]


def test_an_options_object_applies_its_four_lists() -> None:
    options = LabelOptions(include_categories=("Animals and Pets", "Person Description"), exclude_labels=("Face",))
    assert names(apply_filters(LABELS, options)) == ["Animal", "Mammal", "Cat", "Pet", "Person"]
