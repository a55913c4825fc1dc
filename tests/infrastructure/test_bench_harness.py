"""The benchmark harness's own rules (bench/): figures at the defaults, rates measured right, provenance checked.

No timing is measured here; these are the harness's invariants.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from typing import Any

import pytest
from bench.common import diagnostic, metric, utilisation
from bench.images import tagged
from bench.report import markdown, problems
from PIL import Image

from tests.infrastructure.conftest import ROOT


def head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def results(**source: Any) -> dict[str, Any]:
    return {
        "source": {"commit": head(), "dirty": False, "uncommitted_changes": [], **source},
        "complete_run": True,
        "command": "bench/run.py",
        "generated_at": "2026-11-30T00:00:00+00:00",
        "duration_s": 1.0,
        "machine": {"python": "3.11.7", "cpus_available": 2, "load_average_at_start": [1], "load_average_at_end": [1]},
        "deployment": {
            "functions": {"ManifestFunction": {"environment": {"MAX_WORKERS": "8", "OUTPUT_BUCKET": "<O>"}}}
        },
        "metrics": {},
    }


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 90})])
def test_a_tag_changes_the_bytes_and_nothing_a_decoder_sees(fmt: str, options: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((120, 90), 40).convert("RGB").save(buffer, format=fmt, **options)
    original = buffer.getvalue()
    first, second = tagged(original, "n=1"), tagged(original, "n=2")

    assert len({hashlib.sha256(data).digest() for data in (original, first, second)}) == 3
    with Image.open(io.BytesIO(original)) as want, Image.open(io.BytesIO(second)) as got:
        assert got.format == want.format and got.size == want.size
        assert got.convert("RGB").tobytes() == want.convert("RGB").tobytes()


def test_calls_paced_exactly_at_the_quota_use_all_of_it_and_gaps_show() -> None:
    paced = [index / 50 for index in range(200)]
    assert utilisation(paced, 50)["fraction_of_quota"] == pytest.approx(1.0)
    with_a_pause = [*paced[:100], *(moment + 1.0 for moment in paced[100:])]
    assert utilisation(with_a_pause, 50)["fraction_of_quota"] == pytest.approx(200 / 250)


def test_a_headline_figure_cannot_be_measured_with_an_override() -> None:
    as_deployed = {"as_deployed": True, "harness_overrides": {}, "diagnostic_overrides": {}}
    changed = {"as_deployed": False, "diagnostic_overrides": {"MAX_WORKERS": {"template": "8", "set": "16"}}}
    figure = metric(
        1.0, target=1.3, comparison="<=", unit="x", baseline=1, baseline_is="s: x", raw={}, environment=as_deployed
    )
    assert figure["meets_target"] and figure["environment"] == as_deployed
    with pytest.raises(ValueError, match="as deployed"):
        metric(1.0, target=1.3, comparison="<=", unit="x", baseline=1, baseline_is="s: x", raw={}, environment=changed)
    assert diagnostic("d", 2.0, "x", changed)["overrides"] == {"MAX_WORKERS": "16"}


def test_the_report_refuses_what_is_no_commit_s_figures() -> None:
    assert problems(results()) == []
    assert "uncommitted changes" in " ".join(problems(results(dirty=True, uncommitted_changes=["src/x.py"])))
    partial = results() | {"complete_run": False, "command": "bench/run.py --only cache"}
    assert "partial run" in " ".join(problems(partial))
    assert "not in this repository" in " ".join(problems(results(commit="0" * 40)))
    first = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert "the code changed since" in " ".join(problems(results(commit=first)))


def test_the_report_names_the_commit_and_the_defaults() -> None:
    text = markdown(results())
    assert f"Measured at commit `{head()[:12]}`" in text
    assert "`MAX_WORKERS=8`" in text and "OUTPUT_BUCKET" not in text
