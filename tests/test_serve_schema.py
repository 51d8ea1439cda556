"""schemathesis against the service's own OpenAPI document, in-process through ASGI: whatever
the generated requests (bounded and derandomised), the service never answers 5xx."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from nsfwlab import Detector
from nsfwlab.serve import ServeConfig, create_app

schemathesis = pytest.importorskip("schemathesis")

OPERATIONS = [
    "POST /v1/score", "GET /healthz", "GET /readyz", "GET /metrics", "GET /review", "GET /v1/review/items",
    "POST /v1/review/items/{sha256}/label", "GET /v1/review/items/{sha256}/thumbnail", "GET /v1/review/audit",
    "GET /v1/models",
]


@pytest.fixture(scope="module")
def operations(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config = ServeConfig(data_dir=tmp_path_factory.mktemp("schema-data"), max_body_bytes=256_000, max_files=4)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(config, detector))
    ops = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}
    assert set(ops) == set(OPERATIONS)  # a new route must be added here, and so get fuzzed
    return ops


@pytest.mark.parametrize("name", OPERATIONS)
def test_no_server_errors(operations: dict[str, Any], name: str) -> None:
    statuses: set[int] = set()

    @given(case=operations[name].as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call()
        statuses.add(response.status_code)
        assert response.status_code < 500, f"{name} -> {response.status_code}: {response.text[:300]}"
        if response.status_code >= 400 and "json" in response.headers.get("content-type", [""])[0]:
            body = response.json()
            assert ("error" in body and "code" in body) or "results" in body  # never FastAPI's {"detail"}

    check()
    assert statuses
    if name == "POST /v1/score":  # random bytes are refused with a client status: the path really ran
        assert statuses & {400, 413, 415, 422}
