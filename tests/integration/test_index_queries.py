"""The template's named queries, unmodified, on DuckDB over the index of real runs (the demo's photos).

Two runs of the demo's sample manifest go through the real handler (offline model, embedded S3), which
writes each run's index object itself, and every ``AWS::Athena::NamedQuery`` of template.yaml runs on
DuckDB over those objects with only the table name left as it is (or qualified, as the Athena console
writes it). Expected answers are computed from the result records themselves, not from SQL.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from labeler import cli
from labeler.local.http_server import LoopbackServer
from labeler.local.named_queries import NAMED_QUERIES, TEMPLATE_RESOURCES
from labeler.local.query import LocalIndex
from labeler.local.runner import LocalLambdaContext
from labeler.local.samples import BROKEN, PHOTOS, sample_manifest, sample_routes
from labeler.logic.index_rows import INDEX_PREFIX
from tests.conftest import Buckets

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_KEY = "manifests/demo.json"
RAISED_CONFIDENCE = 90.0

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("lambda_env")]


def template_queries() -> dict[str, str]:
    from cfnlint.decode import decode

    decoded, problems = decode(str(ROOT / "template.yaml"))
    assert not problems
    return {
        name: str(decoded["Resources"][logical]["Properties"]["QueryString"])
        for name, logical in TEMPLATE_RESOURCES.items()
    }


@pytest.fixture(scope="module")
def photos() -> Iterator[LoopbackServer]:
    with LoopbackServer(sample_routes()) as server:
        yield server


def label_run(buckets: Buckets, photos: LoopbackServer, monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """Upload the demo manifest and run the real handler on its event (it writes the run's index object)."""
    from labeler.handlers import manifest_created
    from labeler.handlers.composition import reset_services

    monkeypatch.setenv("LABEL_BACKEND", "local")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_services()
    event = buckets.put_manifest(MANIFEST_KEY, sample_manifest(photos.url))
    manifest_created.handler(event, LocalLambdaContext())
    records = buckets.records()
    sequencer = event["Records"][0]["s3"]["object"]["sequencer"]  # the run id of an unversioned bucket's upload
    return {"run_id": sequencer, "records": records}


@pytest.fixture
def two_runs(
    buckets: Buckets, photos: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    first = label_run(buckets, photos, monkeypatch)
    second = label_run(buckets, photos, monkeypatch, MIN_CONFIDENCE=str(RAISED_CONFIDENCE))
    assert len(first["records"]) == len(second["records"]) == len(PHOTOS) + len(BROKEN)
    return first, second


def labels_of(record: dict[str, Any]) -> dict[str, float]:
    return {label["Name"]: label["Confidence"] for label in record.get("labels") or []}


def test_every_named_query_runs_unmodified_on_duckdb_and_answers_what_the_records_say(
    buckets: Buckets, two_runs: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    first, second = two_runs
    sql = template_queries()
    assert {name: text.rstrip("\n") for name, text in sql.items()} == {n: q.sql for n, q in NAMED_QUERIES.items()}
    manifest = {"manifest_bucket": buckets.input, "manifest_key": MANIFEST_KEY}

    with LocalIndex.from_bucket(buckets.s3, buckets.output) as index:
        assert index.objects == 2  # one object per inline run, never one per image

        def run(name: str, **values: Any) -> list[dict[str, Any]]:
            return index.query(sql[name], NAMED_QUERIES[name].bind(values)).records()

        # images_with_label: the cat, once per run, with its confidence (3 decimals kept in the index).
        found = run("images_with_label", since="2026-01-01", label="Cat", min_confidence=50)
        expected = sorted(
            (round(labels_of(r)["Cat"], 3), r["image_id"])
            for each in (first, second)
            for r in each["records"]
            if labels_of(r).get("Cat", 0) >= 50
        )
        assert sorted((row["confidence"], row["image_id"]) for row in found) == expected
        assert {row["image_id"] for row in found} == {"chelsea-the-cat"}
        assert run("images_with_label", since="2026-11-26", label="Cat", min_confidence=50) == []  # dt pruned

        # label_frequencies: the latest run only.
        frequencies = {row["label"]: row["images"] for row in run("label_frequencies", **manifest)}
        assert frequencies == dict(Counter(name for r in second["records"] for name in labels_of(r)))

        # errors_by_code: the latest run's errors, one example id each.
        errors = {row["error_code"]: row["entries"] for row in run("errors_by_code", **manifest)}
        assert errors == {entry.expected_code: 1 for entry in BROKEN}

        # labels_changed: raising MIN_CONFIDENCE dropped exactly the labels under it, image by image.
        changed = run("labels_changed", **manifest, old_run_id=first["run_id"], new_run_id=second["run_id"])
        before = {r["image_id"]: labels_of(r) for r in first["records"] if "labels" in r}
        expected_changed = sorted(
            i for i, labels in before.items() if any(c < RAISED_CONFIDENCE for c in labels.values())
        )
        assert [row["image_id"] for row in changed] == expected_changed
        assert expected_changed  # the test means something: some labels were under the new threshold
        for row in changed:
            assert set(row["new_labels"]) == {n for n, c in before[row["image_id"]].items() if c >= RAISED_CONFIDENCE}
            assert row["old_labels"] == sorted(before[row["image_id"]])
        assert "coffee" not in {row["image_id"] for row in changed if row["old_status"] != row["new_status"]}

        # manifest_runs: newest first.
        runs = run("manifest_runs", **manifest)
        assert [row["run_id"] for row in runs] == [second["run_id"], first["run_id"]]
        assert all(row["entries"] == len(first["records"]) and row["failed"] == len(BROKEN) for row in runs)

        # The Athena console's qualified name works too (<database>.image_labels).
        qualified = sql["errors_by_code"].replace("FROM image_labels", "FROM s3_image_labeler.image_labels")
        assert index.query(qualified, NAMED_QUERIES["errors_by_code"].bind(manifest)).rows


def test_the_query_command_prints_json_csv_and_a_table(
    buckets: Buckets, two_runs: tuple[dict[str, Any], dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = ["--output-bucket", buckets.output]
    capsys.readouterr()
    named = ["--named", "images_with_label", "--param", "since=2026-01-01", "--param", "label=Cat"]
    assert cli.main(["query", *named, "--param", "min_confidence=50", "--json", *bucket]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert {row["image_id"] for row in rows} == {"chelsea-the-cat"} and len(rows) == 2
    assert "Athena ExecutionParameters for images_with_label: '2026-01-01' 'Cat' 50" in captured.err

    assert (
        cli.main(
            ["query", "SELECT image_id, label_names FROM image_labels ORDER BY image_id LIMIT 2", "--csv", *bucket]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "image_id,label_names" and len(lines) == 3

    assert cli.main(["query", "SELECT count(*) AS n FROM image_labels", *bucket]) == 0
    assert str(2 * (len(PHOTOS) + len(BROKEN))) in capsys.readouterr().out

    # One-line errors for what the user must fix.
    assert cli.main(["query", "--named", "nope", *bucket]) == 2
    assert "no named query 'nope'" in capsys.readouterr().err
    assert cli.main(["query", *named, *bucket]) == 2
    assert "needs min_confidence" in capsys.readouterr().err
    assert cli.main(["query", *named, "--param", "min_confidence=high", *bucket]) == 2
    assert "min_confidence must be a number" in capsys.readouterr().err
    assert cli.main(["query", "SELECT nothing FROM image_labels", *bucket]) == 2
    assert "the query failed" in capsys.readouterr().err


def test_partitions_outside_since_until_are_not_even_read(buckets: Buckets, two_runs: Any) -> None:
    keys = [key for key in buckets.output_keys(INDEX_PREFIX)]
    assert all(key.startswith(f"{INDEX_PREFIX}dt=2026-11-25/") for key in keys)
    with LocalIndex.from_bucket(buckets.s3, buckets.output, since=date(2026, 11, 26)) as index:
        assert index.objects == 0
        assert index.query("SELECT count(*) FROM image_labels").rows == [(0,)]  # an empty view of the same shape
        assert [d for d in index.query("SELECT * FROM image_labels").columns][-1] == "dt"
    with LocalIndex.from_bucket(buckets.s3, buckets.output, until=date(2026, 11, 25)) as index:
        assert index.objects == 2
