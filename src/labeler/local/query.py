"""Query the index rows locally with DuckDB: the Athena table's name and schema, no server, no httpfs.

The index objects (``index/dt=YYYY-MM-DD/*.jsonl.gz``) are read with boto3 from an output bucket (the
embedded endpoint's, or a deployed stack's), written to a temporary directory laid out like the
bucket, and exposed to DuckDB as a view named like the Glue table (``image_labels``, also as
``<database>.image_labels``) with exactly the Glue table's columns and the ``dt`` partition column.
DuckDB's extensions (httpfs) are never needed: it only reads local files.

>>> with LocalIndex.from_bucket(s3, "my-output") as index:          # doctest: +SKIP
...     result = index.query("SELECT count(*) AS n FROM image_labels")
>>> result.rows                                                     # doctest: +SKIP
[(12,)]
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any

from labeler.local.named_queries import NAMED_QUERIES, NamedQuery
from labeler.logic.index_rows import (
    INDEX_COLUMNS,
    INDEX_PREFIX,
    INDEX_TABLE,
    PARTITION_COLUMN,
    ArrayOf,
    ColumnType,
    StructOf,
)

DEFAULT_DATABASE = "s3_image_labeler"  # the template's QueryDatabaseName default
_DUCKDB_SCALARS = {"string": "VARCHAR", "double": "DOUBLE", "int": "INTEGER", "bigint": "BIGINT", "boolean": "BOOLEAN"}
_INDEX_SUFFIXES = (".jsonl.gz", ".jsonl")


def duckdb_type(column_type: ColumnType) -> str:
    """The DuckDB spelling of a Hive column type of the index schema.

    >>> duckdb_type(ArrayOf(StructOf((Column("name", "string"),))))
    'STRUCT("name" VARCHAR)[]'
    """
    if isinstance(column_type, ArrayOf):
        return f"{duckdb_type(column_type.element)}[]"
    if isinstance(column_type, StructOf):
        return "STRUCT(" + ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in column_type.fields) + ")"
    return _DUCKDB_SCALARS[column_type]


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def partition_date(key: str) -> date | None:
    """The ``dt`` of an index key, or None for anything that is not an index object."""
    rest = key[len(INDEX_PREFIX) :] if key.startswith(INDEX_PREFIX) else ""
    partition, _, name = rest.partition("/")
    label, _, value = partition.partition("=")
    if label != PARTITION_COLUMN.name or not name or "/" in name or not name.endswith(_INDEX_SUFFIXES):
        return None
    if name.startswith(("_", ".")):  # Athena skips such files: so do we
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def list_index_keys(s3: Any, bucket: str, *, since: date | None = None, until: date | None = None) -> list[str]:
    """Every index object's key in ``bucket`` (paginated listing), optionally only partitions in [since, until]."""
    keys = []
    paginator = s3.get_paginator("list_objects_v2")
    start_after = f"{INDEX_PREFIX}{PARTITION_COLUMN.name}={since.isoformat()}" if since else ""
    for page in paginator.paginate(Bucket=bucket, Prefix=INDEX_PREFIX, StartAfter=start_after):
        for item in page.get("Contents", []):
            found = partition_date(item["Key"])
            if found is None or (since and found < since) or (until and found > until):
                continue
            keys.append(item["Key"])
    return keys


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class LocalIndex:
    """A DuckDB connection with the ``image_labels`` view over index objects copied to a temporary directory."""

    def __init__(self, database: str = DEFAULT_DATABASE) -> None:
        import duckdb

        self.database = database
        self.directory = Path(tempfile.mkdtemp(prefix="s3il-index-"))
        self.objects = 0
        self.connection = duckdb.connect(":memory:")

    @classmethod
    def from_bucket(
        cls,
        s3: Any,
        bucket: str,
        *,
        since: date | None = None,
        until: date | None = None,
        database: str = DEFAULT_DATABASE,
    ) -> LocalIndex:
        """Copy the index objects of ``bucket`` (read with boto3) and open the view over them."""
        index = cls(database)
        try:
            for key in list_index_keys(s3, bucket, since=since, until=until):
                index.add_object(key, s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            index.create_views()
        except BaseException:
            index.close()
            raise
        return index

    @classmethod
    def from_objects(cls, objects: dict[str, bytes], *, database: str = DEFAULT_DATABASE) -> LocalIndex:
        """The view over index objects given as ``{key: bytes}`` (keys as in the bucket)."""
        index = cls(database)
        for key, data in objects.items():
            index.add_object(key, data)
        index.create_views()
        return index

    def add_object(self, key: str, data: bytes) -> None:
        day = partition_date(key)
        if day is None:
            raise ValueError(f"not an index object key: {key!r}")
        target = self.directory / f"{PARTITION_COLUMN.name}={day.isoformat()}" / key.rsplit("/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.objects += 1

    def _source_sql(self) -> str:
        names = [column.name for column in INDEX_COLUMNS]
        if self.objects == 0:  # DuckDB refuses a glob that matches nothing: an empty relation of the same shape
            casts = [f'CAST(NULL AS {duckdb_type(c.type)}) AS "{c.name}"' for c in (*INDEX_COLUMNS, PARTITION_COLUMN)]
            return f"SELECT {', '.join(casts)} WHERE false"
        columns = (
            "{" + ", ".join(f"{_sql_string(c.name)}: {_sql_string(duckdb_type(c.type))}" for c in INDEX_COLUMNS) + "}"
        )
        pattern = _sql_string(str(self.directory / f"{PARTITION_COLUMN.name}=*" / "*"))
        selected = ", ".join(f'"{name}"' for name in [*names, PARTITION_COLUMN.name])
        # Every part is a constant of the schema or the temporary directory, quoted: no outside text.
        options = (
            f"format = 'newline_delimited', columns = {columns}, "
            f"hive_partitioning = true, hive_types = {{{_sql_string(PARTITION_COLUMN.name)}: 'VARCHAR'}}"
        )
        return f"SELECT {selected} FROM read_json({pattern}, {options})"  # noqa: S608

    def create_views(self) -> None:
        source = self._source_sql()
        self.connection.execute(f'CREATE OR REPLACE VIEW "{INDEX_TABLE}" AS {source}')
        self.connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.database}"')
        self.connection.execute(f'CREATE OR REPLACE VIEW "{self.database}"."{INDEX_TABLE}" AS {source}')

    def query(self, sql: str, parameters: Sequence[Any] | None = None) -> QueryResult:
        cursor = self.connection.execute(sql, list(parameters) if parameters else None)
        description = cursor.description or []
        return QueryResult(columns=[d[0] for d in description], rows=list(cursor.fetchall()) if description else [])

    def run_named(self, name: str, values: dict[str, Any]) -> QueryResult:
        query: NamedQuery = NAMED_QUERIES[name]
        return self.query(query.sql, query.bind(values))

    def close(self) -> None:
        try:
            self.connection.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalIndex:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def iter_cells(row: Sequence[Any]) -> Iterator[str]:
    """A row's values as text for a table: lists joined with ', ', None as empty."""
    for value in row:
        if value is None:
            yield ""
        elif isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
            yield ", ".join(str(item) for item in value)
        elif isinstance(value, list | dict):
            yield json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        elif isinstance(value, float):
            yield f"{value:g}"
        else:
            yield str(value)
