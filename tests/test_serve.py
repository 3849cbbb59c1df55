"""The Serve application over real HTTP: one real Ray Serve per module, artifacts fitted once per session.

Serve holds CPUs while it runs (four deployments at 0.25), so it is started after the fit and its
application is deleted at the end of the module, leaving the cluster whole for other test files.
The offline /docs checks (scripts/check_docs_offline.py) run here too, on the colocated app under its
route prefix /colo, rather than on a Serve app of their own.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from ports import free_port

APP = "ltray-test"
COLO_APP = "ltray-test-colo"





@pytest.fixture(scope="module")
def server(ray_cluster, serve_artifacts):
    """Serve started once; the chain app at / and the colocated app at /colo, both on the same run."""
    from ray import serve

    from deployments.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"artifacts": serve_artifacts, "serve.topology": "chain"}), name=APP, route_prefix="/",
              blocking=False)
    serve.run(build_app({"artifacts": serve_artifacts, "serve.topology": "colocated"}), name=COLO_APP,
              route_prefix="/colo", blocking=False)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60) as client:
        deadline = time.time() + 120
        while True:
            try:
                if (client.get("/readyz").status_code == 200
                        and client.get("/colo/readyz").status_code == 200):
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "Serve app not ready within 120 s"
            time.sleep(0.5)
        yield client
    for name in (APP, COLO_APP):
        serve.delete(name)  # frees the replicas' CPUs; serve.shutdown waits for the session's end


@pytest.fixture(scope="module")
def recommender(serve_artifacts):
    from ltray.recommend import load_recommender

    return load_recommender(serve_artifacts)


def _known_users(rec, n: int = 6) -> list[str]:
    return [str(u) for u in rec.models.user_ids[:: max(1, len(rec.models.user_ids) // n)][:n]]


# -- /recommend ------------------------------------------------------------------------------------
def test_recommend_equals_in_process_recommender(server, recommender):
    for user in _known_users(recommender):
        r = server.post("/recommend", json={"user_id": user, "k": 15})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = recommender.recommend(user, k=15)
        got = body["items"]
        assert [it["item_id"] for it in got] == expected["item_id"].tolist()
        np.testing.assert_allclose([it["score"] for it in got], expected["score"].to_numpy(), rtol=1e-5,
                                   atol=1e-6)
        assert [it["segment"] for it in got] == expected["segment"].tolist()
        assert [it["source"] for it in got] == expected["source"].tolist()
        assert [it["reason"] for it in got] == expected["reason"].tolist()
        assert body["fallback"] is False and body["version"] == recommender.version


def test_recommend_k_distinct_unseen_labelled_items(server, recommender):
    seen_of = recommender.models.als.seen
    for user in _known_users(recommender):
        body = server.post("/recommend", json={"user_id": user, "k": 25}).json()
        ids = [it["item_id"] for it in body["items"]]
        assert len(ids) == 25 and len(set(ids)) == 25
        row = recommender.generator.user_row(user)
        seen = set(recommender.models.item_ids[seen_of[row].indices])
        assert not seen & set(ids)
        for it in body["items"]:
            assert it["segment"] in {"head", "tail", "cold"} and it["source"] in {"cf", "item", "tail", "bridge"}
            assert it["reason"] and np.isfinite(it["score"])


def test_exclude_seen_false_and_session_users_match_in_process(server, recommender):
    user = _known_users(recommender)[0]
    body = server.post("/recommend", json={"user_id": user, "k": 10, "exclude_seen": False}).json()
    expected = recommender.recommend(user, k=10, exclude_seen=False)
    assert [it["item_id"] for it in body["items"]] == expected["item_id"].tolist()

    session = recommender.models.item_ids[[3, 50, 7]].tolist()
    req = {"user_id": "nobody-knows-me", "k": 10, "recent_items": [*session, "no-such-item"]}
    body = server.post("/recommend", json=req).json()
    expected = recommender.recommend("nobody-knows-me", k=10, recent_items=req["recent_items"])
    ids = [it["item_id"] for it in body["items"]]
    assert ids == expected["item_id"].tolist()
    assert body["fallback"] is False and body["unknown_recent_items"] == ["no-such-item"]
    assert not set(session) & set(ids)


def test_unknown_user_gets_the_declared_fallback(server, recommender):
    body = server.post("/recommend", json={"user_id": "never-seen-user", "k": 12}).json()
    assert body["fallback"] is True
    assert len(body["items"]) == 12 and {it["source"] for it in body["items"]} == {"pop"}
    expected = recommender.recommend("never-seen-user", k=12)
    assert [it["item_id"] for it in body["items"]] == expected["item_id"].tolist()


def test_answer_reports_the_share_this_users_list_was_blended_with(server, recommender):
    """Without a share in the request, the answer's tail_share is the operating point's share for this
    user (under quota_by=affinity it follows the user's history, so users differ)."""
    for user in _known_users(recommender)[:5]:
        body = server.post("/recommend", json={"user_id": user, "k": 20}).json()
        expected = recommender.shares_for(recommender.generator.state(user))[0]
        assert body["tail_share"] == pytest.approx(expected, abs=1e-6)


def test_tail_share_changes_the_served_tail_share(server, recommender):
    shares = {}
    for ask in (0.0, 0.5, 1.0):
        got = []
        for user in _known_users(recommender):
            body = server.post("/recommend", json={"user_id": user, "k": 20, "tail_share": ask}).json()
            assert body["tail_share"] == ask
            got.append(np.mean([it["segment"] != "head" for it in body["items"]]))
        shares[ask] = got
    assert min(shares[0.5]) >= 0.5 and min(shares[1.0]) == 1.0
    assert np.mean(shares[0.0]) < np.mean(shares[0.5]) < np.mean(shares[1.0])


def _batch_stats(app: str, deployment: str) -> dict[str, int]:
    """Batching counts summed over every replica of a deployment: a handle call reaches any one replica,
    so it is asked until each has answered (the router picks among idle replicas at random)."""
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=app)
    want = serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0)
    seen: dict[str, dict[str, int]] = {}
    for _ in range(50):
        stats = handle.batch_stats.remote().result()
        seen[stats.pop("replica")] = stats
        if len(seen) >= want:
            break
    assert want and len(seen) == want, f"batch_stats reached {len(seen)} of {want} replicas"
    return {"passes": sum(s["passes"] for s in seen.values()),
            "requests": sum(s["requests"] for s in seen.values()),
            "largest": max(s["largest"] for s in seen.values())}


def test_ranker_batches_concurrent_requests(server, recommender):
    from concurrent.futures import ThreadPoolExecutor

    before = _batch_stats(APP, "CTRRanker")
    users = _known_users(recommender, 24)
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda u: server.post("/recommend", json={"user_id": u, "k": 5}).status_code,
                              users * 2))
    assert codes == [200] * len(codes)
    after = _batch_stats(APP, "CTRRanker")
    served = after["requests"] - before["requests"]
    assert 0 < after["passes"] - before["passes"] < served and after["largest"] > 1


def test_colocated_pipeline_batches_requests_and_answers_each_as_alone(server, recommender):
    """Concurrent requests share one FAISS search and one forward pass; each still gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    users = _known_users(recommender, 24)
    alone = {u: server.post("/colo/recommend", json={"user_id": u, "k": 10}).json() for u in users}
    before = _batch_stats(COLO_APP, "Pipeline")
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda u: server.post("/colo/recommend", json={"user_id": u, "k": 10}), users * 2))
    after = _batch_stats(COLO_APP, "Pipeline")
    assert [r.status_code for r in together] == [200] * len(together)
    for u, r in zip(users * 2, together, strict=True):
        assert [i["item_id"] for i in r.json()["items"]] == [i["item_id"] for i in alone[u]["items"]]
    assert 0 < after["passes"] - before["passes"] < after["requests"] - before["requests"]
    assert after["largest"] > 1


def test_auto_topology_colocates_on_one_node_only():
    from deployments.app import resolve_topology

    assert resolve_topology("auto", 1) == "colocated"
    assert resolve_topology("auto", 3) == "chain"
    assert resolve_topology("chain", 1) == "chain" and resolve_topology("colocated", 5) == "colocated"


def test_colocated_topology_answers_the_same(server, recommender):
    for user in _known_users(recommender, 3):
        chain = server.post("/recommend", json={"user_id": user, "k": 10}).json()
        colo = server.post("/colo/recommend", json={"user_id": user, "k": 10}).json()
        assert [i["item_id"] for i in colo["items"]] == [i["item_id"] for i in chain["items"]]
    assert server.get("/colo/items/" + recommender.models.item_ids[0] + "/similar?k=3").status_code == 200


# -- /search and /similar ------------------------------------------------------------------------------
def test_search_finds_the_item_whose_text_it_is(server, serve_artifacts, recommender):
    import pyarrow.parquet as pq

    items = pq.read_table(Path(serve_artifacts) / "data" / "items.parquet").to_pandas()
    for row in (0, 17, 123):
        r = server.post("/search", json={"text": items["text"][row], "k": 5})
        assert r.status_code == 200, r.text
        hits = r.json()["items"]
        assert len(hits) == 5 and hits[0]["item_id"] == items["item_id"][row]
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    tail = server.post("/search", json={"text": items["text"][5], "k": 7, "segment": "tail"}).json()["items"]
    assert len(tail) == 7 and {h["segment"] for h in tail} == {"tail"}


def test_similar_items(server, recommender):
    item = recommender.models.item_ids[10]
    r = server.get(f"/items/{item}/similar", params={"k": 8})
    assert r.status_code == 200, r.text
    hits = r.json()["items"]
    assert len(hits) == 8 and item not in {h["item_id"] for h in hits}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    expected = recommender.generator.similar_items(item, 8)
    assert [h["item_id"] for h in hits] == expected["item_id"].tolist()
    head = server.get(f"/items/{item}/similar", params={"k": 4, "segment": "head"}).json()["items"]
    assert {h["segment"] for h in head} == {"head"}
    missing = server.get("/items/no-such-item/similar")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]


def test_item_ids_holding_a_slash_are_reached_percent_encoded(server, recommender):
    """`a%2Fb` reaches the route with the id `a/b` (a 404 naming it, not the router's "Not Found")."""
    from urllib.parse import quote

    for prefix in ("", "/colo"):
        r = server.get(f"{prefix}/items/no%2Fsuch%2Fitem/similar")
        assert r.status_code == 404 and "'no/such/item'" in r.json()["detail"], r.text
    item = recommender.models.item_ids[3]
    assert server.get(f"/items/{quote(item, safe='')}/similar", params={"k": 3}).status_code == 200


def test_answers_carry_the_catalogs_titles(server, serve_artifacts, recommender):
    """Both topologies (the title is added by the ranking stage they share) and every item answer."""
    import pyarrow.parquet as pq

    items = pq.read_table(Path(serve_artifacts) / "data" / "items.parquet").to_pandas()
    title = dict(zip(items["item_id"], items["title"], strict=True))
    user = _known_users(recommender)[0]
    for prefix in ("", "/colo"):
        answers = [server.post(f"{prefix}/recommend", json={"user_id": user, "k": 10}),
                   server.post(f"{prefix}/recommend", json={"user_id": "never-seen-user", "k": 5}),
                   server.post(f"{prefix}/search", json={"text": items["text"][4], "k": 5}),
                   server.get(f"{prefix}/items/{items['item_id'][4]}/similar", params={"k": 5})]
        for r in answers:
            assert r.status_code == 200, r.text
            got = r.json()["items"]
            assert got and all(it["title"] == title[it["item_id"]] for it in got), got[:2]


# -- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, field", [
    ({"user_id": "u1", "colour": "red"}, "colour"),
    ({"user_id": "u1", "k": 0}, "k"),
    ({"user_id": "u1", "k": 501}, "k"),
    ({"user_id": "u1", "tail_share": 1.5}, "tail_share"),
    ({"user_id": ""}, "user_id"),
    ({"k": 5}, "user_id"),
    ({"user_id": "u1", "recent_items": "not-a-list"}, "recent_items"),
])
def test_recommend_rejects_bad_requests_with_422(server, body, field):
    r = server.post("/recommend", json=body)
    assert r.status_code == 422
    assert any(field in map(str, err["loc"]) for err in r.json()["detail"]), r.text


@pytest.mark.parametrize("body, field", [
    ({"text": "x" * 2001}, "text"),
    ({"text": ""}, "text"),
    ({"text": "space", "k": 0}, "k"),
    ({"text": "space", "segment": "middle"}, "segment"),
    ({"text": "space", "extra": 1}, "extra"),
])
def test_search_rejects_bad_requests_with_422(server, body, field):
    r = server.post("/search", json=body)
    assert r.status_code == 422
    assert any(field in map(str, err["loc"]) for err in r.json()["detail"]), r.text


def test_similar_rejects_bad_query_with_422(server, recommender):
    item = recommender.models.item_ids[0]
    assert server.get(f"/items/{item}/similar", params={"k": 0}).status_code == 422
    assert server.get(f"/items/{item}/similar", params={"k": 501}).status_code == 422
    assert server.get(f"/items/{item}/similar", params={"segment": "x"}).status_code == 422


def test_malformed_json_is_422_not_500(server):
    r = server.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


# Raw bodies: NaN, Infinity and "\ud800" are what Python's json module reads, and what httpx's json= never sends.
_BIG = b"9" * 400
HOSTILE_BODIES = [
    ("/recommend", b'{"user_id": "1", "tail_share": NaN}', "tail_share"),
    ("/recommend", b'{"user_id": "1", "tail_share": Infinity}', "tail_share"),
    ("/recommend", b'{"user_id": "1", "tail_share": -Infinity}', "tail_share"),
    ("/recommend", b'{"user_id": "1", "tail_share": 1e999}', "tail_share"),
    ("/recommend", b'{"user_id": "1", "tail_share": "0.5"}', "tail_share"),
    ("/recommend", b'{"user_id": "1", "k": NaN}', "k"),
    ("/recommend", b'{"user_id": "1", "k": -Infinity}', "k"),
    ("/recommend", b'{"user_id": "1", "k": 1e999}', "k"),
    ("/recommend", b'{"user_id": "1", "k": ' + _BIG + b"}", "k"),
    ("/recommend", b'{"user_id": "1", "k": "5"}', "k"),
    ("/recommend", b'{"user_id": "1", "k": 5.0}', "k"),
    ("/recommend", b'{"user_id": "1", "exclude_seen": 0}', "exclude_seen"),
    ("/recommend", b'{"user_id": "1", "exclude_seen": "true"}', "exclude_seen"),
    ("/recommend", b'{"user_id": "\\ud800"}', "user_id"),
    ("/recommend", b'{"user_id": "a\\udfffb"}', "user_id"),
    ("/recommend", b'{"user_id": NaN}', "user_id"),
    ("/recommend", b'{"user_id": 1e400}', "user_id"),
    ("/recommend", b'{"user_id": ' + _BIG + b"}", "user_id"),  # a numeric id over 256 characters
    ("/recommend", b'{"user_id": true}', "user_id"),
    ("/recommend", b'{"user_id": 4.5}', "user_id"),
    ("/recommend", b'{"user_id": {"id": 1}}', "user_id"),
    ("/recommend", b'{"user_id": "1", "recent_items": ["\\udfff"]}', "recent_items"),
    ("/recommend", b'{"user_id": "1", "recent_items": [1.5, NaN]}', "recent_items"),
    ("/recommend", b'{"user_id": "1", "\\ud800": 1}', None),
    ("/recommend", b"[NaN, Infinity]", None),
    ("/recommend", b"null", None),
    ("/search", b'{"text": "a\\ud800b"}', "text"),
    ("/search", b'{"text": "space", "k": Infinity}', "k"),
    ("/search", b'{"text": "space", "k": NaN}', "k"),
    ("/search", b'{"text": "space", "k": "5"}', "k"),
    ("/search", b'{"text": 5}', "text"),
    ("/search", b'{"text": NaN}', "text"),
]


@pytest.mark.parametrize("prefix", ["", "/colo"])
def test_hostile_bodies_get_422_with_a_safe_short_echo(server, prefix):
    """Non-finite numbers, lone surrogates, wrong types and oversized numbers: 422 (never 500), and the
    answer is valid JSON whatever the input held."""
    wrong = []
    for route, body, field in HOSTILE_BODIES:
        r = server.post(prefix + route, content=body, headers={"content-type": "application/json"})
        ok = r.status_code == 422 and len(r.content) < 2000
        if ok:
            errors = r.json()["detail"]
            ok = field is None or any(field in map(str, e["loc"]) for e in errors)
        if not ok:
            wrong.append((route, body[:60], r.status_code, r.text[:200]))
    assert not wrong, wrong


def test_unreadable_bodies_get_400(server):
    for body in (b'{"user_id": "\xff\xfe"}', b'{"user_id": ' + b"9" * 5000 + b"}"):  # not UTF-8; over 4300 digits
        r = server.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "parsing the body" in r.json()["detail"], r.text


def test_overlong_text_is_echoed_truncated(server):
    r = server.post("/search", json={"text": "x" * 100_000})
    assert r.status_code == 422 and len(r.content) < 1000, len(r.content)
    assert r.json()["detail"][0]["input"].startswith("xxxx")


def test_numeric_ids_are_taken_as_their_decimal_form(server):
    as_int = server.post("/recommend", json={"user_id": 42, "k": 5, "recent_items": [7, "no-such-item"]})
    as_str = server.post("/recommend", json={"user_id": "42", "k": 5, "recent_items": ["7", "no-such-item"]})
    assert as_int.status_code == 200, as_int.text
    got, want = as_int.json(), as_str.json()
    assert got["user_id"] == "42" and got["unknown_recent_items"] == ["7", "no-such-item"]
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]


def test_a_body_that_never_arrives_gets_408_quickly(server):
    """A client that declares 10 bytes and sends 2 holds the connection only serve.body_read_timeout_s."""
    import socket

    from ltray.config import ServeConfig

    url = httpx.URL(str(server.base_url))
    t0 = time.monotonic()
    with socket.create_connection((url.host, url.port), timeout=60) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n"
                     b"content-length: 10\r\n\r\n{}")
        reply = b""
        while b"\r\n\r\n" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    took = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert took < ServeConfig().body_read_timeout_s + 5, took


def test_body_over_one_mib_is_413(server):
    big = b'{"user_id": "u1", "recent_items": ["' + b"x" * (1 << 20) + b'"]}'
    r = server.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(20):
            yield b" " * (64 << 10)
    r = server.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_ready_and_docs(server, recommender):
    assert server.get("/healthz").json() == {"status": "ok"}
    ready = server.get("/readyz").json()
    assert ready["ready"] is True and ready["version"] == recommender.version
    assert set(ready["stages"]) == {"CFRecall", "TailRetrieval", "CTRRanker"}
    assert server.get("/docs").status_code == 200
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/search", "/items/{item_id}/similar", "/healthz", "/readyz"} <= set(paths)
    for route in ("/recommend", "/search"):  # every error answer a POST may get is documented
        assert {"400", "408", "413", "422", "503"} <= set(paths[route]["post"]["responses"])


# -- /docs and /redoc without internet ----------------------------------------------------------------------
# Their JS and CSS come from the app, over real Ray Serve. The app runs under a route prefix, as behind
# `serve run ... route_prefix=/x`: the pages' asset URLs must carry it. This module's colocated app (two
# replicas, the lighter topology) is served under /colo: the checks run on it (an app of their own cost a
# Serve start of its own). The browser check runs Chromium headless when one is installed
# (`apt-get install -y chromium`).
_DOCS_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_docs_offline.py"
_docs_spec = importlib.util.spec_from_file_location("check_docs_offline", _DOCS_SCRIPT)
docs_check = importlib.util.module_from_spec(_docs_spec)
_docs_spec.loader.exec_module(docs_check)
DOCS_PREFIX = "/colo"


@pytest.fixture(scope="module")
def docs_base(server) -> str:
    """The colocated app's URL, its route prefix included."""
    return str(server.base_url).rstrip("/") + DOCS_PREFIX


def test_docs_pages_load_only_local_assets(docs_base):
    pages = docs_check.check_pages(docs_base)  # every URL on this server under the prefix, 200, JS/CSS/PNG
    for page, urls in pages.items():
        assert all(u.startswith(DOCS_PREFIX + "/") for u in urls), (page, urls)
    assert f"{DOCS_PREFIX}/docs-assets/swagger-ui-bundle.js" in pages["/docs"]
    assert f"{DOCS_PREFIX}/docs-assets/swagger-ui.css" in pages["/docs"]
    assert f"{DOCS_PREFIX}/docs-assets/redoc.standalone.js" in pages["/redoc"]
    assert f"{DOCS_PREFIX}/openapi.json" in pages["/docs"] and f"{DOCS_PREFIX}/openapi.json" in pages["/redoc"]
    r = httpx.get(f"{docs_base}/docs/oauth2-redirect", timeout=30)  # Swagger UI's OAuth2 page, also local
    assert r.status_code == 200 and "oauth2" in r.text.lower()
    # the docs routes stay out of the API schema (test_openapi_fuzz_gives_no_5xx fuzzes every schema route)
    paths = httpx.get(f"{docs_base}/openapi.json", timeout=30).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))], list(paths)


@pytest.mark.skipif(docs_check.find_chromium() is None,
                    reason="no Chromium on PATH (or LTRAY_CHROMIUM): `apt-get install -y chromium` runs this check")
def test_chromium_renders_every_operation(docs_base):
    found = docs_check.check_browser(docs_base, docs_check.find_chromium())
    ops = found["operations"]
    assert ("post", "/recommend") in ops and ("post", "/search") in ops
    assert found["opblocks"] == len(docs_check.schema_operations(docs_base)) == 5


# -- schema-driven fuzz ------------------------------------------------------------------------------------
def test_openapi_fuzz_gives_no_5xx(server):
    """schemathesis generates requests from the app's own OpenAPI schema, valid and invalid, for every route
    (the hand-written hostile bodies above cover what JSON Schema cannot express: NaN, lone surrogates)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    openapi = server.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(openapi)
    routes = [(path, method.upper(), "parameters" in op or "requestBody" in op)
              for path, methods in openapi["paths"].items() for method, op in methods.items()]
    assert len(routes) == 5, routes
    failures = []
    for path, method, has_input in routes:
        for mode in GenerationMode if has_input else [GenerationMode.POSITIVE]:  # nothing to make invalid
            strategy = schema[path][method].as_strategy(generation_mode=mode)

            @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def call(case):
                resp = case.call(base_url=str(server.base_url), timeout=60)
                if resp.status_code >= 500:
                    failures.append((case.method, case.path, case.body, case.path_parameters, case.query,
                                     resp.status_code, resp.text[:200]))

            call()
    assert not failures, failures[:5]


# -- fault: a ranker replica dies under load ---------------------------------------------------------------
def _ranker_replicas() -> list[tuple[str, str]]:
    import ray

    return [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
            if "CTRRanker" in a["name"] and APP in a["name"] and "SERVE_REPLICA" in a["name"]]


def test_killing_a_ranker_replica_under_load(server, recommender):
    import ray

    before = _ranker_replicas()
    assert before, "no CTRRanker replica actor found"
    users = _known_users(recommender, 20)
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()
    total, clients = 240, 4
    counter = iter(range(total))

    def client():
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    ok = c.post("/recommend", json={"user_id": users[i % len(users)], "k": 10}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    results.append((time.time(), ok))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    while len(results) < 20:
        time.sleep(0.05)
    killed_at = time.time()
    name, ns = before[0]
    ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
    for t in threads:
        t.join(timeout=300)
    assert len(results) == total
    failed = [ts for ts, ok in results if not ok]
    after = sum(ts > killed_at for ts, _ in results)
    print(f"replica kill: {len(failed)} of {total} requests failed; {after} finished after the kill")
    assert after > total // 2, "the kill did not happen under load"
    assert len(failed) / total < 0.02, f"{len(failed)} of {total} failed"
    assert all(ts - killed_at < 15 for ts in failed)
    # Serve replaced the replica: a new actor name, and the app is ready again.
    deadline = time.time() + 60
    while not (set(_ranker_replicas()) - set(before) and server.get("/readyz").status_code == 200):
        assert time.time() < deadline, "Serve did not replace the killed CTRRanker replica"
        time.sleep(0.5)


def _replica_pids(app: str, deployment: str) -> dict[str, int]:
    """Live replica actors of one deployment -> worker pids, from this session's own GCS (a process scan
    could hit another Ray on the machine running an app of the same name)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {a["Name"]: a["Pid"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and (a.get("Name") or "").startswith(prefix) and a.get("Pid")}


def test_sigkilled_replica_under_load_fails_no_request(server, recommender):
    """A replica process SIGKILLed while clients ask, in both layouts at once (the colocated Pipeline, the
    chain's CTRRanker): the in-flight calls are retried on the other replica (serve.min_replicas=2), so
    every request answers 200 (or, at worst, 503 with Retry-After: never another 5xx and never a hang),
    answers keep coming, and Serve replaces the replica within a few health-check periods."""
    import signal

    from ray import serve

    targets = {"/colo": (COLO_APP, "Pipeline"), "": (APP, "CTRRanker")}

    def running(app: str, dep: str) -> int:
        return serve.status().applications[app].deployments[dep].replica_states.get("RUNNING", 0)

    # Two running replicas each (the test before replaced a ranker replica; a starting one's actor is
    # alive too, and killing the one running would leave none).
    deadline = time.time() + 120
    while not all(running(app, dep) >= 2 for app, dep in targets.values()):
        assert time.time() < deadline, "the stages did not run two replicas each within 120 s"
        time.sleep(0.5)
    before = {prefix: _replica_pids(app, dep) for prefix, (app, dep) in targets.items()}
    assert all(len(pids) >= 2 for pids in before.values()), f"want two replicas per stage: {before}"
    users = _known_users(recommender, 20)
    rows: list[tuple[str, float, int, bool]] = []  # (prefix, end time, status or 0 = no answer, Retry-After?)
    lock, stop = threading.Lock(), threading.Event()
    clients_per_layout, client_timeout_s, after_kill_s = 3, 10, 8

    def client(prefix: str, seed: int):
        with httpx.Client(base_url=server.base_url, timeout=client_timeout_s) as c:
            i = seed
            while not stop.is_set():
                try:
                    r = c.post(f"{prefix}/recommend", json={"user_id": users[i % len(users)], "k": 10})
                    row = (prefix, time.time(), r.status_code, "retry-after" in r.headers)
                except httpx.HTTPError:
                    row = (prefix, time.time(), 0, False)
                with lock:
                    rows.append(row)
                i += 1

    threads = [threading.Thread(target=client, args=(prefix, j)) for prefix in targets
               for j in range(clients_per_layout)]
    for t in threads:
        t.start()
    try:
        while len(rows) < 40:
            time.sleep(0.05)
        for pids in before.values():
            os.kill(sorted(pids.items())[0][1], signal.SIGKILL)
        killed_at = time.time()
        time.sleep(after_kill_s)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=2 * client_timeout_s)
    for prefix in targets:
        mine = [r for r in rows if r[0] == prefix]
        bad = [r for r in mine if r[2] != 200 and not (r[2] == 503 and r[3])]
        assert not bad, f"{prefix or '/'}: {len(bad)} answers neither 200 nor 503 with Retry-After: {bad[:5]}"
        failed = sum(r[2] != 200 for r in mine)
        assert failed <= max(1, len(mine) // 100), f"{prefix or '/'}: {failed} of {len(mine)} failed"
        marks = [killed_at, *sorted(r[1] for r in mine if r[2] == 200 and r[1] > killed_at),
                 max(r[1] for r in mine)]
        gap = max(b - a for a, b in zip(marks, marks[1:], strict=False))
        assert gap < 5, f"{prefix or '/'}: no answer for {gap:.1f} s after the kill"
        assert sum(r[1] > killed_at for r in mine) > 20, "the kill did not happen under load"
    # Serve replaced both replicas: new replica actors, and both apps ready again.
    deadline = time.time() + 60
    while not all(set(_replica_pids(app, dep)) - set(before[prefix]) for prefix, (app, dep) in targets.items()):
        assert time.time() < deadline, "Serve did not replace the killed replicas in 60 s"
        time.sleep(0.5)
    assert server.get("/readyz").status_code == 200 and server.get("/colo/readyz").status_code == 200


def _second_run(src: str, dest: Path, tail_share: float) -> str:
    """A copy of a run whose rank stage is committed again, as a new version, with another tail share."""
    import json
    import shutil

    from ltray.artifacts import ArtifactStore

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("_train"))
    store = ArtifactStore(str(dest))
    old = store.stage_path("rank")
    with store.writing("rank", store.stage_info("rank").get("fingerprint")) as w:
        for f in old.iterdir():
            if not f.name.startswith("."):
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, w.path / f.name)
        blend = json.loads((old / "blend.json").read_text())
        # Uniform quotas: every answer then reports this very share (affinity would scale it per user).
        (w.path / "blend.json").write_text(json.dumps({**blend, "tail_share": tail_share, "quota_by": "uniform"}))
    return str(dest)


def test_version_switch_under_load_drops_no_request(server, serve_artifacts, recommender, tmp_path):
    """Redeploying the app on a new run folder (what `serve deploy` with a new URI does) while clients
    keep asking: every request answers 200, from one version or the other, and the new one takes over."""
    from ray import serve

    from deployments.app import build_app

    app, prefix, new_share = "ltray-switch", "/switch", 0.75
    second = _second_run(serve_artifacts, tmp_path / "second", new_share)
    # Small CPU shares: old and new replicas side by side stay within what the module's apps leave free.
    args = {"serve.num_cpus": "0.05", "serve.max_replicas": "1", "serve.topology": "chain"}
    serve.run(build_app({"artifacts": serve_artifacts, **args}), name=app, route_prefix=prefix, blocking=False)
    deadline = time.time() + 120
    while server.get(f"{prefix}/readyz").status_code != 200:
        assert time.time() < deadline, "the switch app did not get ready in 120 s"
        time.sleep(0.5)
    old_version = server.get(f"{prefix}/readyz").json()["version"]
    assert old_version == recommender.version

    users = _known_users(recommender, 12)
    results: list[tuple[int, str | None, float | None]] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(seed: int):
        with httpx.Client(base_url=server.base_url, timeout=120) as c:
            i = seed
            while not stop.is_set():
                try:
                    r = c.post(f"{prefix}/recommend", json={"user_id": users[i % len(users)], "k": 10})
                    body = r.json() if r.status_code == 200 else {}
                    row = (r.status_code, body.get("version"), body.get("tail_share"))
                except httpx.HTTPError as e:
                    row = (0, type(e).__name__, None)
                with lock:
                    results.append(row)
                i += 1

    threads = [threading.Thread(target=client, args=(j,)) for j in range(3)]
    for t in threads:
        t.start()
    try:
        while len(results) < 20:
            time.sleep(0.05)
        serve.run(build_app({"artifacts": second, **args}), name=app, route_prefix=prefix, blocking=False)
        switched_at = len(results)
        while len(results) < switched_at + 30:  # keep the load on after the new version took over
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    try:
        failed = [r for r in results if r[0] != 200]
        assert not failed, f"{len(failed)} of {len(results)} requests failed during the switch: {failed[:5]}"
        versions = [v for _, v, _ in results]
        new_version = server.get(f"{prefix}/readyz").json()["version"]
        assert new_version not in (None, old_version)
        assert set(versions) == {old_version, new_version} and versions[0] == old_version
        # The last answers come from the new run, with its tail share.
        assert all(v == new_version and share == new_share for _, v, share in results[-10:])
    finally:
        serve.delete(app)


# -- config and builder, without Serve ----------------------------------------------------------------------
def test_serve_config_yaml_is_a_valid_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((Path(__file__).parents[1] / "deployments" / "serve_config.yaml").read_text())
    cfg = ServeDeploySchema.model_validate(raw)
    app = cfg.applications[0]
    assert app.import_path == "deployments.app:build_app"
    deps = {d.name: d for d in app.deployments}
    assert set(deps) == {"Ingress", "CFRecall", "TailRetrieval", "CTRRanker"}
    for d in deps.values():
        auto = raw["applications"][0]["deployments"][[x["name"] for x in raw["applications"][0]["deployments"]]
                                                       .index(d.name)]["autoscaling_config"]
        assert {"min_replicas", "max_replicas", "target_ongoing_requests"} <= set(auto)
        assert 0 < d.ray_actor_options.num_cpus < 1 and d.max_ongoing_requests >= 1


def test_answer_sources_are_the_candidate_sources():
    """A source the candidates can carry but the response schema does not know would be a 500."""
    from typing import get_args

    from deployments.schemas import Source
    from ltray.candidates import SOURCES

    assert set(get_args(Source)) == set(SOURCES)


def test_build_app_arguments():
    from deployments.app import serve_config_from_args

    uri, cfg = serve_config_from_args({"artifacts": "some/run", "serve.topology": "colocated",
                                       "serve.max_replicas": "4"})
    assert uri == "some/run" and cfg.topology == "colocated" and cfg.max_replicas == 4
    with pytest.raises(ValueError, match="artifacts"):
        serve_config_from_args({})
    with pytest.raises(ValueError, match="unknown build_app arguments"):
        serve_config_from_args({"artifacts": "x", "port": 1})


def test_metrics_reach_rays_prometheus_endpoint(server, recommender):
    """Each stage exports request counts, latencies and served tail share through Ray's metrics agent."""
    import ray

    for user in _known_users(recommender, 3):
        server.post("/recommend", json={"user_id": user, "k": 10})
    port = ray._private.worker.global_worker.node.metrics_export_port
    want = {f'stage="{s}"' for s in ("Ingress", "CFRecall", "TailRetrieval", "CTRRanker")}
    deadline = time.time() + 60
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [ln for ln in text.splitlines() if ln.startswith("ray_ltray_")]
        found = {name: {s for s in want if any(s in ln for ln in lines if ln.startswith(name))}
                 for name in ("ray_ltray_requests", "ray_ltray_latency_ms_bucket", "ray_ltray_tail_share")}
        if all(v == want for v in found.values()):
            break
        assert time.time() < deadline, f"metrics missing after 60 s: {found}"
        time.sleep(2)
