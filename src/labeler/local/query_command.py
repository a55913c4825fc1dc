"""``s3-image-labeler query``: SQL over the index rows of an output bucket, on DuckDB (no Athena needed).

    s3-image-labeler query "SELECT image_id, label_names FROM image_labels LIMIT 5" --stack s3-image-labeler
    s3-image-labeler query --named images_with_label --param since=2026-11-01 --param label=Cat \\
        --param min_confidence=90 --output-bucket my-output --csv
    s3-image-labeler query --list

The SQL runs unmodified on Athena (the named queries are the template's ``AWS::Athena::NamedQuery``
entries, character for character). cli.py only registers this command.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import date
from typing import Any

from labeler.local.named_queries import NAMED_QUERIES, ParameterError, athena_execution_parameters


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``["label=Cat", "min_confidence=90"]`` → ``{"label": "Cat", "min_confidence": "90"}``."""
    from labeler.cli import CliError

    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--param takes NAME=VALUE, not {pair!r}")
        values[name.strip()] = value
    return values


def parse_day(text: str | None, option: str) -> date | None:
    from labeler.cli import CliError

    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"{option} takes a date YYYY-MM-DD, not {text!r}") from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_csv(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """CSV on stdout: a header row; lists and structs as JSON text."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            json.dumps(_jsonable(value), ensure_ascii=False) if isinstance(value, list | dict) else value
            for value in row
        )


def print_named_queries(out: Any) -> None:
    from rich.table import Table

    table = Table(title="named queries (template.yaml: AWS::Athena::NamedQuery)", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("what it returns")
    table.add_column("parameters (--param NAME=VALUE, in this order for Athena)")
    for query in NAMED_QUERIES.values():
        params = "\n".join(f"{p.name} ({p.kind}): {p.help}" for p in query.parameters)
        table.add_row(query.name, query.description, params)
    out.print(table)


def resolve_sql(args: argparse.Namespace) -> tuple[str, list[Any], str]:
    """(SQL, positional values, title) from the arguments: free SQL, or a named query and its --param values."""
    from labeler.cli import CliError

    if bool(args.sql) == bool(args.named):
        raise CliError('give either SQL ("SELECT ... FROM image_labels") or --named NAME (see --list)')
    params = parse_params(args.param or [])
    if args.sql:
        if params:
            raise CliError("--param only applies to --named queries")
        return args.sql, [], ""
    query = NAMED_QUERIES.get(args.named)
    if query is None:
        raise CliError(f"no named query {args.named!r}: one of {', '.join(NAMED_QUERIES)}")
    try:
        values = query.bind(params)
        athena = athena_execution_parameters(query, params)
    except ParameterError as exc:
        raise CliError(str(exc)) from exc
    return query.sql, values, f"Athena ExecutionParameters for {query.name}: {' '.join(athena) or '(none)'}"


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from labeler.cli import CliError, aws_session, consoles, print_json, require_bucket, resolve_buckets
    from labeler.local.query import LocalIndex, iter_cells

    out, err = consoles()
    if args.list:
        print_named_queries(out)
        return 0
    sql, values, note = resolve_sql(args)
    since, until = parse_day(args.since, "--since"), parse_day(args.until, "--until")
    session = aws_session(args)
    bucket = resolve_buckets(args, session, need_input=False).output
    s3 = session.client("s3")
    require_bucket(s3, bucket, "output")
    with LocalIndex.from_bucket(s3, bucket, since=since, until=until) as index:
        err.print(f"read {index.objects} index object(s) from s3://{bucket}/index/ into DuckDB", markup=False)
        if args.named:
            err.print(note, markup=False)
        try:
            result = index.query(sql, values)
        except duckdb.Error as exc:
            raise CliError(f"the query failed: {str(exc).splitlines()[0]}") from exc
    if args.json:
        print_json([{k: _jsonable(v) for k, v in record.items()} for record in result.records()])
    elif args.csv:
        write_csv(result.columns, result.rows)
    else:
        from rich.table import Table

        table = Table(title=args.named or None)
        for column in result.columns:
            table.add_column(column, overflow="fold")
        for row in result.rows:
            table.add_row(*iter_cells(row))
        out.print(table)
        err.print(f"{len(result.rows)} row(s)", markup=False)
    return 0


def add_query_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``query`` on the CLI's subparsers (cli.py calls this)."""
    query = commands.add_parser(
        "query",
        parents=[common],
        help="run SQL over the index rows (DuckDB locally; the same SQL as Athena)",
        description="Read the index rows (index/dt=YYYY-MM-DD/*.jsonl.gz) of the output bucket with boto3 and "
        "run SQL on them with DuckDB, as the view image_labels (the Glue table's name and columns). "
        "Named queries are the template's Athena named queries.",
    )
    query.add_argument("sql", nargs="?", metavar="SQL", help='e.g. "SELECT count(*) FROM image_labels"')
    query.add_argument("--named", metavar="NAME", help="run a named query (see --list) instead of SQL")
    query.add_argument("--param", action="append", metavar="NAME=VALUE", help="a named query's parameter (repeat)")
    query.add_argument("--list", action="store_true", help="list the named queries and their parameters")
    query.add_argument("--since", metavar="YYYY-MM-DD", help="read only partitions dt >= this date")
    query.add_argument("--until", metavar="YYYY-MM-DD", help="read only partitions dt <= this date")
    group = query.add_argument_group("the output bucket (flag, else --stack outputs, else OUTPUT_BUCKET)")
    group.add_argument("--output-bucket", help="the bucket results, reports and the index are written to")
    group.add_argument("--stack", help="take the bucket from this CloudFormation stack's outputs")
    fmt = query.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the rows as a JSON array of objects")
    fmt.add_argument("--csv", action="store_true", help="print the rows as CSV (lists as JSON text)")
    query.set_defaults(func=cmd_query)
