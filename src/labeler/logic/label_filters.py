"""DetectLabels' GeneralLabels filters applied to Label objects: the offline backend and the stand-in use this.

Pure and dependency-free. The rules (docs/image-properties.md, "Label filters"):

1. No filter set: every label is kept, unchanged.
2. A label is *included* when no inclusion filter is set, or its ``Name`` is in
   ``LabelInclusionFilters``, or one of its ``Categories`` is in ``LabelCategoryInclusionFilters``
   (either inclusion list admits it: the two are a union).
3. A label is *excluded* when its ``Name`` is in ``LabelExclusionFilters`` or one of its
   ``Categories`` is in ``LabelCategoryExclusionFilters``. Exclusion wins over inclusion.
4. Names match exactly, case included: the API reference says "the exact label names or label
   categories must be supplied". Aliases are not names and never match.
5. Filters choose which Label objects come back; they never edit one. A kept label keeps its full
   ``Parents`` list even when a parent label was filtered out (``Parents`` describes the taxonomy,
   not the response), and a parent is kept or dropped by its own Name and Categories.
6. Order is preserved. Filtering comes after ``MinConfidence`` and before ``MaxLabels``: the
   service "returns the specified number of highest confidence labels", counted among those kept.

>>> labels = [{"Name": "Cat", "Categories": [{"Name": "Animals and Pets"}]},
...           {"Name": "Person", "Categories": [{"Name": "Person Description"}]}]
>>> [label["Name"] for label in filter_labels(labels, exclude_categories=["Person Description"])]
['Cat']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class GeneralLabelFilters(Protocol):
    """The four filter lists (``labeler.models.label_options.LabelOptions`` has them)."""

    @property
    def include_labels(self) -> tuple[str, ...]: ...
    @property
    def exclude_labels(self) -> tuple[str, ...]: ...
    @property
    def include_categories(self) -> tuple[str, ...]: ...
    @property
    def exclude_categories(self) -> tuple[str, ...]: ...


def _categories(label: Mapping[str, Any]) -> set[str]:
    return {category.get("Name", "") for category in label.get("Categories") or ()}


def filter_labels(
    labels: Iterable[Mapping[str, Any]],
    *,
    include_labels: Iterable[str] = (),
    exclude_labels: Iterable[str] = (),
    include_categories: Iterable[str] = (),
    exclude_categories: Iterable[str] = (),
) -> list[Any]:
    """The labels the filters keep, in their order, the objects themselves (rules in the module docstring)."""
    include_names, include_cats = set(include_labels), set(include_categories)
    exclude_names, exclude_cats = set(exclude_labels), set(exclude_categories)
    including = bool(include_names or include_cats)
    kept = []
    for label in labels:
        name, categories = label.get("Name"), _categories(label)
        if including and name not in include_names and not categories & include_cats:
            continue
        if name in exclude_names or categories & exclude_cats:
            continue
        kept.append(label)
    return kept


def apply_filters(labels: Iterable[Mapping[str, Any]], filters: GeneralLabelFilters) -> list[Any]:
    """:func:`filter_labels` with the lists of an options object.

    >>> from labeler.models.label_options import LabelOptions
    >>> apply_filters([{"Name": "Cat"}, {"Name": "Dog"}], LabelOptions(include_labels=("Dog",)))
    [{'Name': 'Dog'}]
    """
    return filter_labels(
        labels,
        include_labels=filters.include_labels,
        exclude_labels=filters.exclude_labels,
        include_categories=filters.include_categories,
        exclude_categories=filters.exclude_categories,
    )
