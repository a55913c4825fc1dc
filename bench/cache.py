"""Never pay twice, at the defaults: ``rekognition_calls_on_reupload`` and ``calls_for_identical_bytes``."""

from __future__ import annotations

from bench.common import Metrics, diagnostic, log, metric, short_report
from bench.runs import run_manifest, template_defaults
from bench.standins import StandIns


def bench_cache(si: StandIns) -> Metrics:
    from bench.images import distinct_jpegs
    from labeler.local.http_server import StaticRoute

    n = 20
    for index, image in enumerate(distinct_jpegs(n, photo="coffee")):
        si.site.add(f"/again/{index}.jpg", StaticRoute(image, "image/jpeg", etag=True))
    entries = [{"id": f"again-{index:02d}", "url": si.site.url(f"/again/{index}.jpg")} for index in range(n)]
    stack = si.new_stack("cache")
    quota = float(si.function(stack, "ManifestFunction").environment["REKOGNITION_MAX_TPS"])
    si.rekognition.reset(quota_tps=quota)
    log(f"cache: a {n}-entry manifest, then the same manifest under a new key, then the same key again")
    first = run_manifest(si, stack, entries, "manifests/first.json", quota=quota)
    si.site.reset_counters()
    again = run_manifest(si, stack, entries, "manifests/second-copy.json", quota=quota)
    again_hits = sum(si.site.hits(f"/again/{index}.jpg") for index in range(n))
    again_304 = sum(si.site.not_modified_count(f"/again/{index}.jpg") for index in range(n))
    same_key = run_manifest(si, stack, entries, "manifests/first.json", quota=quota)

    unique, copies = 3, 8
    for index, image in enumerate(distinct_jpegs(unique, photo="astronaut")):
        si.site.add(f"/same/{index}.jpg", StaticRoute(image, "image/jpeg"))
    duplicates = [
        {"id": f"dup-{index:02d}", "url": si.site.url(f"/same/{index % unique}.jpg?n={index}")}
        for index in range(unique * copies)
    ]
    log(f"cache: {unique * copies} URLs serving {unique} distinct images, at the defaults and at MAX_WORKERS 1 and 16")
    runs = {}
    for workers in (None, "1", "16"):  # None: the template's MAX_WORKERS; the others are diagnostics
        runs[workers] = run_manifest(
            si,
            si.new_stack(f"dup{workers or 'd'}"),
            duplicates,
            "manifests/duplicates.json",
            quota=quota,
            diagnostic={"MAX_WORKERS": workers} if workers else None,
        )
    default = runs[None]
    return {
        "rekognition_calls_on_reupload": metric(
            again["rekognition_calls"],
            target=0,
            comparison="==",
            unit="calls",
            baseline=first["rekognition_calls"],
            baseline_is="calls: the first upload of the same manifest",
            raw={
                "entries": n,
                "first_upload": short_report(first["report"]),
                "new_key": short_report(again["report"]),
                "new_key_requests_to_image_host": again_hits,
                "new_key_answered_304": again_304,
                "new_key_s3_calls_per_entry": {
                    name: round(value / n, 2) for name, value in sorted(again["s3_calls"].items())
                },
                "first_upload_s3_calls_per_entry": {
                    name: round(value / n, 2) for name, value in sorted(first["s3_calls"].items())
                },
                "same_key_reuploaded_calls": same_key["rekognition_calls"],
                "same_key_reuploaded": short_report(same_key["report"]),
            },
            environment=again["environment"],
        ),
        "calls_for_identical_bytes": metric(
            default["rekognition_calls"],
            target=unique,
            comparison="<=",
            unit="calls",
            baseline=unique * copies,
            baseline_is="calls: one per entry (what a labeler without a content cache pays)",
            raw={
                "entries": unique * copies,
                "unique_contents": unique,
                "max_workers": template_defaults(si).get("MAX_WORKERS"),
                "report": short_report(default["report"]),
            },
            environment=default["environment"],
            diagnostics=[
                diagnostic(
                    f"DetectLabels calls at MAX_WORKERS={workers}",
                    runs[workers]["rekognition_calls"],
                    "calls",
                    runs[workers]["environment"],
                )
                for workers in ("1", "16")
            ],
        ),
    }
