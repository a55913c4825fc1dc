"""A work batch's message carries its run's options and cap, so every worker labels the same way."""

from __future__ import annotations

import json

from labeler.logic.fanout import WorkBatch
from labeler.models.label_options import LabelOptions
from labeler.models.records import ManifestEntry, ManifestRef

MANIFEST = ManifestRef("in", "big.json", version_id="v1")
ENTRIES = (ManifestEntry(0, "a", "https://example.com/a.jpg"),)


def test_the_run_s_options_and_cap_travel_in_the_message() -> None:
    options = LabelOptions(
        min_confidence=80,
        features=("GENERAL_LABELS", "IMAGE_PROPERTIES"),
        exclude_categories=("Person Description",),
        max_dominant_colors=3,
        max_label_calls=500,
    )
    body = json.loads(json.dumps(WorkBatch(MANIFEST, 4, ENTRIES, options).to_message()))  # as SQS carries it

    assert body["options"]["max_label_calls"] == 500
    batch = WorkBatch.from_message(body)
    assert batch.options == options and batch.options.cache_tag() == options.cache_tag()
    assert (batch.manifest, batch.batch_index, batch.entries) == (MANIFEST, 4, ENTRIES)


def test_a_message_from_before_options_existed_still_reads() -> None:
    body = WorkBatch(MANIFEST, 0, ENTRIES).to_message()
    assert "options" not in body
    assert WorkBatch.from_message(body).options is None  # the worker then applies the stack's options


def test_an_s3_entry_s_version_travels_in_the_message() -> None:
    entries = (
        ManifestEntry(0, "cat", "s3://my-photos/cat.jpg", version_id="3HL4kqtJvjVBH40Nrjfkd"),
        ManifestEntry(1, "dog", "s3://my-photos/dog.jpg"),
    )
    body = json.loads(json.dumps(WorkBatch(MANIFEST, 0, entries).to_message()))
    assert body["entries"][0]["version_id"] == "3HL4kqtJvjVBH40Nrjfkd" and "version_id" not in body["entries"][1]
    assert WorkBatch.from_message(body).entries == entries


def test_unseen_keys_travel_only_when_set() -> None:
    unseen = json.loads(json.dumps(WorkBatch(MANIFEST, 0, ENTRIES, unseen_keys=True).to_message()))
    assert unseen["unseen_keys"] is True and WorkBatch.from_message(unseen).unseen_keys
    plain = WorkBatch(MANIFEST, 0, ENTRIES).to_message()
    assert "unseen_keys" not in plain and not WorkBatch.from_message(plain).unseen_keys
    # anything but true (a message from elsewhere, a string) means the keys are looked at
    assert not WorkBatch.from_message({**plain, "unseen_keys": "true"}).unseen_keys
