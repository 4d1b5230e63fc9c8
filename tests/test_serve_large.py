"""`recap serve` on a 100k-clip library: every list bounded, pages from anywhere in it, filters and
search over all of it (speed is measured by bench/serve.py, not asserted here)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.serve import build
from pipeline.serve.app import create_app
from tests.test_serve_api import caption_only_config

N = 100_000
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("serve100k") / "lib"
    build(root, N, np.random.default_rng(0))
    with TestClient(create_app(root, caption_only_config())) as c:
        yield c


def test_pages_are_bounded_anywhere_in_100k_clips(client: TestClient):
    first = client.get("/api/clips", params={"limit": 60})
    assert first.status_code == 200 and first.json()["total"] == N
    assert len(first.json()["items"]) == 60 and len(first.content) < 64 * 1024
    last = client.get("/api/clips", params={"offset": N - 10, "limit": 60}).json()
    assert [c["clip_id"] for c in last["items"]] == [f"c{i:07d}" for i in range(N - 10, N)]
    assert client.get("/api/clips", params={"limit": 100_000}).status_code == 422     # never the whole table


def test_filters_and_search_cover_the_whole_library(client: TestClient):
    page = client.get("/api/clips", params={"where": 'camera_motion == "static" and duration_s > 19.5',
                                            "limit": 60}).json()
    assert 0 < page["total"] < N and all(c["duration_s"] > 19.5 for c in page["items"])
    hits = client.get("/api/search", params={"q": "a dog running", "limit": 20}).json()
    assert len(hits["items"]) == 20
