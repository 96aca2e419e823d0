"""Fuzzed bodies through the real public app in-process (tests/api/fuzz_app.py): never a 5xx,
every broken body a 4xx with the error shape, nothing of one reaches storage.

The default run sends a few thousand bodies (seconds); scripts/fuzz_api.py sends 100,000 and
a sample to a real node.
"""

from __future__ import annotations

from tests.api.fuzz_app import fuzz_config, fuzz_in_process, limits_of
from tests.api.fuzz_bodies import STORING_ROUTES, Fuzzer

DIM = 8


async def test_fuzzed_bodies_are_4xx_and_reach_nothing() -> None:
    config = fuzz_config()
    fuzzer = Fuzzer(limits_of(config, DIM), seed=20260)
    bodies = list(fuzzer.bodies(4000))
    report, reached = await fuzz_in_process(iter(bodies), config, DIM)
    summary = report.as_dict()
    assert report.bodies == 4000
    assert summary["5xx"] == 0 and summary["crashes"] == 0 and summary["broken_bodies_accepted"] == 0, summary
    must_fail = sum(1 for body in bodies if body.must_fail)
    assert sum(count for status, count in report.by_status.items() if 400 <= status < 500) >= must_fail
    # What reached the stub's storage came from bodies allowed to be valid (random trees, flipped bytes).
    may_store = sum(1 for body in bodies if not body.must_fail and body.path in STORING_ROUTES)
    assert reached["ingest_documents"] + reached["remove"] + reached["api_keys_created"] <= may_store * config.api.max_documents_per_request
    # Every family and the main refusals were exercised.
    assert set(report.by_family) == {"broken", "bytes", "tree"}
    assert {"400 invalid_request", "413 payload_too_large", "415 unsupported_media_type"} <= set(report.by_code)


def test_the_fuzzer_is_repeatable() -> None:
    limits = limits_of(fuzz_config(), DIM)
    first = [(b.path, b.data) for b in Fuzzer(limits, seed=3).bodies(200)]
    assert first == [(b.path, b.data) for b in Fuzzer(limits, seed=3).bodies(200)]
