"""Sharded retrieval over real Ray Serve: one deployment per shard + a router, against unsharded search."""

from __future__ import annotations

import socket

import httpx
import numpy as np
import pytest

from ltray.embed.encoder import TextEncoder
from ltray.index.faiss_index import VectorIndex
from ltray.index.sharded import ShardedIndex

APP = "ltray-sharded-test"
N_SHARDS = 3


@pytest.fixture(scope="module")
def catalog(small_synthetic) -> np.ndarray:
    texts = small_synthetic.items["text"].iloc[:300].astype(str).tolist()
    return TextEncoder(dtype="fp32", device="cpu", max_length=32).encode(texts)


@pytest.fixture(scope="module")
def sharded_app(ray_cluster, catalog, tmp_path_factory):
    from ray import serve

    from deployments.sharded import build_sharded_app

    folder = tmp_path_factory.mktemp("sharded")
    ids = np.arange(len(catalog), dtype=np.int64)
    ShardedIndex.build(ids, catalog, N_SHARDS, factory="Flat").save(folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})  # joins Serve if it already runs
    handle = serve.run(build_sharded_app({"index_dir": str(folder), "num_cpus": 0.1}), name=APP,
                       route_prefix="/sharded", blocking=False)
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config  # the port Serve really uses, if it was started before
    yield handle, folder, f"http://{http.host}:{http.port}"
    serve.delete(APP)


def test_router_equals_unsharded_search(sharded_app, catalog):
    handle, folder = sharded_app[0], sharded_app[1]
    exact = VectorIndex(catalog.shape[1], "Flat").build(np.arange(len(catalog)), catalog)
    in_process = ShardedIndex.load(folder)
    queries = catalog[::37] + 0.01
    for k in (1, 10, 50):
        scores, ids = handle.search.remote(queries, k).result(timeout_s=120)
        want_s, want_i = exact.search(queries, k)
        # the unsharded top-k scores exactly; ids too, up to the order of float-equal scores
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)
        assert np.mean(ids == want_i) > 0.99
        # and the very answer of the same shards merged in-process
        np.testing.assert_array_equal(ids, in_process.search(queries, k)[1])


def test_each_shard_group_holds_only_its_shard(sharded_app, catalog):
    from ray import serve

    folder = sharded_app[1]
    sizes = [serve.get_deployment_handle(f"RetrievalShard{i}", app_name=APP).ntotal.remote().result(timeout_s=60)
             for i in range(N_SHARDS)]
    assert sum(sizes) == len(catalog) and max(sizes) <= len(catalog) // N_SHARDS + 1
    manifest = ShardedIndex.read_manifest(folder)
    assert sizes == [s["ntotal"] for s in manifest["shards"]]


def test_http_route(sharded_app, catalog):
    base = sharded_app[2]
    r = httpx.post(f"{base}/sharded", json={"vector": catalog[5].tolist(), "k": 5}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["ids"][0][0] == 5 and len(r.json()["ids"][0]) == 5
