"""The named queries over the index table: one definition for Athena (template.yaml) and DuckDB (``query --named``).

``template.yaml`` declares each query as an ``AWS::Athena::NamedQuery`` whose ``QueryString`` is this
module's SQL, character for character (``tests/infrastructure/test_template.py`` checks it), and the
local ``s3-image-labeler query --named NAME`` runs the same text on DuckDB. The SQL is written in the
subset both engines accept:

* ``UNNEST`` of a **scalar** array with ``WITH ORDINALITY`` (``label_names``), then ``labels[n].field``:
  Trino expands an array of rows into one column per field while DuckDB keeps one struct column, so
  unnesting ``labels`` itself cannot be written the same way for both;
* ``?`` positional parameters, in the order they appear (Athena's ``ExecutionParameters``, DuckDB's
  prepared-statement values); strings compare with ``=``, dates are ``'YYYY-MM-DD'`` strings like ``dt``;
* ``array_sort``, ``cardinality``, ``round``, ``IS DISTINCT FROM``, ``CASE``: the same in both.

>>> NAMED_QUERIES["images_with_label"].parameter_names()
('since', 'label', 'min_confidence')
>>> values = {"since": "2026-01-01", "label": "Cat", "min_confidence": "90"}
>>> athena_execution_parameters(NAMED_QUERIES["images_with_label"], values)
["'2026-01-01'", "'Cat'", '90']
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

ParameterKind = Literal["string", "number", "date"]


class ParameterError(ValueError):
    """A named query's parameter is missing, unknown or not of its kind."""


@dataclass(frozen=True)
class QueryParameter:
    name: str
    kind: ParameterKind
    help: str

    def convert(self, raw: Any) -> Any:
        """The value to bind in DuckDB: str for strings and dates (``dt`` is a string), float for numbers."""
        text = str(raw).strip() if not isinstance(raw, int | float) else raw
        if self.kind == "number":
            try:
                return float(text)
            except ValueError as exc:
                raise ParameterError(f"{self.name} must be a number, not {raw!r}") from exc
        if self.kind == "date":
            try:
                return date.fromisoformat(str(text)).isoformat()
            except ValueError as exc:
                raise ParameterError(f"{self.name} must be a date YYYY-MM-DD, not {raw!r}") from exc
        return str(raw)

    def athena_literal(self, raw: Any) -> str:
        """The value as an Athena execution parameter: a SQL literal (strings quoted, quotes doubled)."""
        value = self.convert(raw)
        if self.kind == "number":
            return repr(value).removesuffix(".0") if float(value).is_integer() else repr(value)
        return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    # One entry per ``?`` of ``sql``, in order.
    parameters: tuple[QueryParameter, ...]

    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def bind(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional values for ``sql`` from ``{name: raw value}``; every parameter is required."""
        unknown = set(values) - set(self.parameter_names())
        if unknown:
            raise ParameterError(
                f"{self.name} has no parameter {', '.join(sorted(unknown))} "
                f"(its parameters: {', '.join(self.parameter_names())})"
            )
        missing = [p.name for p in self.parameters if p.name not in values]
        if missing:
            raise ParameterError(f"{self.name} needs {', '.join(missing)}: pass --param NAME=VALUE")
        return [p.convert(values[p.name]) for p in self.parameters]


def _placeholders(sql: str) -> int:
    return len(re.findall(r"\?", re.sub(r"'[^']*'", "''", sql)))


_SINCE = QueryParameter(
    "since", "date", "only runs on or after this date (YYYY-MM-DD): the dt partition, keeps the scan small"
)
_BUCKET = QueryParameter("manifest_bucket", "string", "the input bucket of the manifest")
_KEY = QueryParameter("manifest_key", "string", "the manifest's key")

IMAGES_WITH_LABEL = NamedQuery(
    name="images_with_label",
    description="Images labeled with a given label at or above a confidence, in runs since a date.",
    sql="""SELECT i.image_id, i.url, i.labels[l.n].confidence AS confidence,
       i.manifest_bucket, i.manifest_key, i.run_id, i.labeled_at
FROM image_labels AS i
CROSS JOIN UNNEST(i.label_names) WITH ORDINALITY AS l (label_name, n)
WHERE i.dt >= ? AND l.label_name = ? AND i.labels[l.n].confidence >= ?
ORDER BY confidence DESC, i.image_id, i.labeled_at""",
    parameters=(
        _SINCE,
        QueryParameter("label", "string", "the label's name, as Rekognition spells it (Cat, Coffee Cup, ...)"),
        QueryParameter("min_confidence", "number", "the lowest confidence to include, 0-100"),
    ),
)

# The rows that say how a manifest's images stand now: its latest upload's, each replaced by the row of a later
# re-check of that upload when one rewrote the image's record (re-check runs, "<run id>!recheck-<time>", write
# rows only for the images they changed: docs/recheck.md). Both queries below start from it.
_CURRENT_ROWS = """WITH upload AS (
    SELECT manifest_bucket, manifest_key, max(run_order) AS run_order
    FROM image_labels
    WHERE manifest_bucket = ? AND manifest_key = ? AND run_id NOT LIKE '%!recheck-%'
    GROUP BY manifest_bucket, manifest_key
),
newest_rows AS (
    SELECT i.*, row_number() OVER (PARTITION BY i.entry_index, i.image_id ORDER BY i.run_order DESC) AS newest
    FROM image_labels AS i
    JOIN upload
      ON i.manifest_bucket = upload.manifest_bucket
     AND i.manifest_key = upload.manifest_key
     AND i.run_order >= upload.run_order
)"""

LABEL_FREQUENCIES = NamedQuery(
    name="label_frequencies",
    description="How many images of a manifest carry each label now (its latest upload, as re-checked since), "
    "with average and highest confidence.",
    sql=_CURRENT_ROWS
    + """
SELECT l.label_name AS label, count(*) AS images,
       round(avg(i.labels[l.n].confidence), 1) AS avg_confidence,
       round(max(i.labels[l.n].confidence), 1) AS max_confidence
FROM newest_rows AS i
CROSS JOIN UNNEST(i.label_names) WITH ORDINALITY AS l (label_name, n)
WHERE i.newest = 1
GROUP BY l.label_name
ORDER BY images DESC, label""",
    parameters=(_BUCKET, _KEY),
)

ERRORS_BY_CODE = NamedQuery(
    name="errors_by_code",
    description="Failed entries of a manifest now (its latest upload, as re-checked since), counted by error code, "
    "with one example id each.",
    sql=_CURRENT_ROWS
    + """
SELECT i.error_code, count(*) AS entries, min(i.image_id) AS example_image_id
FROM newest_rows AS i
WHERE i.newest = 1 AND i.status = 'error'
GROUP BY i.error_code
ORDER BY entries DESC, i.error_code""",
    parameters=(_BUCKET, _KEY),
)

LABELS_CHANGED = NamedQuery(
    name="labels_changed",
    description="Images of a manifest whose set of label names (or status) differs between two runs.",
    sql="""SELECT o.image_id, o.url,
       array_sort(o.label_names) AS old_labels, array_sort(n.label_names) AS new_labels,
       o.status AS old_status, n.status AS new_status
FROM image_labels AS o
JOIN image_labels AS n
  ON n.manifest_bucket = o.manifest_bucket
 AND n.manifest_key = o.manifest_key
 AND n.image_id = o.image_id
WHERE o.manifest_bucket = ? AND o.manifest_key = ? AND o.run_id = ? AND n.run_id = ?
  AND o.error_code IS DISTINCT FROM 'duplicate_id'
  AND n.error_code IS DISTINCT FROM 'duplicate_id'
  AND (array_sort(o.label_names) <> array_sort(n.label_names) OR o.status <> n.status)
ORDER BY o.image_id""",
    parameters=(
        _BUCKET,
        _KEY,
        QueryParameter("old_run_id", "string", "the earlier run (run_id; see manifest_runs)"),
        QueryParameter("new_run_id", "string", "the later run"),
    ),
)

MANIFEST_RUNS = NamedQuery(
    name="manifest_runs",
    description="The runs of a manifest, newest first: run id, date, rows (entries; a re-check: the images it "
    "changed), succeeded and failed.",
    sql="""SELECT run_id, run_order, min(dt) AS dt, count(*) AS entries,
       sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS succeeded,
       sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS failed,
       min(labeled_at) AS first_labeled_at, max(labeled_at) AS last_labeled_at
FROM image_labels
WHERE manifest_bucket = ? AND manifest_key = ?
GROUP BY run_id, run_order
ORDER BY run_order DESC""",
    parameters=(_BUCKET, _KEY),
)

NAMED_QUERIES: dict[str, NamedQuery] = {
    query.name: query for query in (IMAGES_WITH_LABEL, LABEL_FREQUENCIES, ERRORS_BY_CODE, LABELS_CHANGED, MANIFEST_RUNS)
}
# The template's logical id of each NamedQuery resource.
TEMPLATE_RESOURCES: dict[str, str] = {
    "images_with_label": "ImagesWithLabelQuery",
    "label_frequencies": "LabelFrequenciesQuery",
    "errors_by_code": "ErrorsByCodeQuery",
    "labels_changed": "LabelsChangedQuery",
    "manifest_runs": "ManifestRunsQuery",
}

for _query in NAMED_QUERIES.values():  # a definition whose ? count and parameters disagree is a bug
    assert _placeholders(_query.sql) == len(_query.parameters), _query.name


def athena_execution_parameters(query: NamedQuery, values: Mapping[str, Any]) -> list[str]:
    """``ExecutionParameters`` for ``aws athena start-query-execution`` (SQL literals, in order)."""
    query.bind(values)  # same checks as locally
    return [p.athena_literal(values[p.name]) for p in query.parameters]
