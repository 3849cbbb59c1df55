"""End to end: the pipeline on the synthetic default (small) and on MovieLens, through the library and the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest

from ltray.config import load_config
from ltray.logs import lines_to

SMALL = [
    "data.synthetic.n_items=600", "data.synthetic.n_users=300", "data.synthetic.interactions_per_user=25",
    "cf.iterations=8", "rank.epochs=2", "rank.batch_size=256", "eval.tune=false", "rank.refit_on_all=false",
    "cf.tune=false", "cf.mix=0.5",
]


# Large enough for the learned parts to matter (the 600-item catalog is too small for a ranker
# to learn from 150 users), small enough for CI: about 2 minutes on 2 idle cores.
MEDIUM = [
    "data.synthetic.n_items=1500", "data.synthetic.n_users=1000", "data.synthetic.interactions_per_user=25",
    "cf.factors=32", "cf.iterations=8", "rank.epochs=2", "rank.batch_size=256", "eval.tune=false",
]


@pytest.fixture(scope="module")
def synthetic_run(ray_cluster, tmp_path_factory):
    from ltray.pipeline import run

    cfg = load_config(overrides=MEDIUM)
    root = tmp_path_factory.mktemp("synthetic-run")
    logs: list[str] = []
    with lines_to(logs.append):  # the lines the CLI prints (caplog is per test; this fixture is per module)
        report = run(cfg, str(root / "art"))
    return cfg, root / "art", report, logs


def test_run_writes_report_with_every_section(synthetic_run):
    _, art, report, _ = synthetic_run
    assert report.exists() and report.name == "report.html"
    md = (report.parent / "report.md").read_text()
    for section in ("Metrics", "Trade-off", "decile", "Lorenz", "Example users", "timings"):
        assert section.lower() in md.lower(), section
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 3
    manifest = json.loads((art / "manifest.json").read_text())
    assert {"data", "embed", "cf", "index", "rank", "eval"} <= set(manifest["stages"])
    assert manifest["config"]["data"]["synthetic"]["n_items"] == 1500
    assert "ltray" in manifest["metrics"] and "ALS" in manifest["metrics"]
    for stage in ("data", "embed", "cf", "index", "rank"):
        assert manifest["stages"][stage]["seconds"] >= 0


def test_synthetic_tail_recall_beats_als_at_equal_recall(synthetic_run):
    """The generator plants text-driven tail preferences: ltray must find more of them than ALS."""
    _, art, _, _ = synthetic_run
    metrics = json.loads((art / "eval" / "metrics.json").read_text())["metrics"]
    ours, als = metrics["ltray"], metrics["ALS"]
    assert ours["TailRecall@20"] > als["TailRecall@20"]
    # "Equal recall": within the configured loss budget (eval.max_recall_loss) plus sampling noise.
    assert ours["Recall@20"] >= 0.95 * als["Recall@20"]
    assert ours["ColdRecall@20"] >= als["ColdRecall@20"]


def test_kept_ranker_learns_from_every_validation_user(synthetic_run):
    """The operating point is chosen by cross-fitting (a ranker trained on each half of the validation
    users lists the other half); the ranker kept (rank.refit_on_all) is trained again on all of them, and
    the choice's own rankers are not kept."""
    import re

    _, art, _, logs = synthetic_run
    trained = {m.group(1): int(m.group(2).replace(",", "")) for line in logs
               if (m := re.search(r"rank: (\w+ ranker(?:, \w+ half)?), validation AUC [\d.]+ after \d+ epochs "
                                  r"\(([\d,]+) samples", line))}
    halves = ("choice ranker, first half", "choice ranker, second half")
    assert set(trained) == {*halves, "kept ranker"}, trained
    # Each user's rows split by time alike in every table: the kept ranker trains on both halves' rows.
    assert trained["kept ranker"] == sum(trained[h] for h in halves) and min(trained[h] for h in halves) > 0
    assert any("learns from all" in line for line in logs)
    kept = json.loads((art / "rank" / "rank.json").read_text())
    assert kept["n_train"] == trained["kept ranker"]
    # The kept (served) ranker comes from Ray Train's workers; the throw-away choice ranker trained in process.
    assert kept["in_process"] is False and kept["num_workers"] == 2
    # Its Ray Train checkpoints were copied into rank/ and deleted with the training's storage.
    assert kept["checkpoint_path"] is None and not (art / "_train").exists()
    assert any("choice ranker" in line and "in process" in line for line in logs)
    assert not [p for p in (art / "rank").iterdir() if p.name.startswith("_choice")]


def test_rerun_is_a_no_op(synthetic_run, ray_cluster, caplog):
    from ltray.pipeline import fit

    cfg, art, _, _ = synthetic_run
    before = json.loads((art / "manifest.json").read_text())["stages"]
    caplog.set_level(logging.INFO, logger="ltray")
    fit(cfg, str(art), holdout=True)
    after = json.loads((art / "manifest.json").read_text())["stages"]
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("ltray")]
    assert logs and all("skipped" in line for line in logs), logs
    for stage in ("data", "embed", "cf", "index", "rank"):
        assert after[stage]["version"] == before[stage]["version"]


def test_a_rerun_records_its_config_where_the_data_stage_is_reused(tmp_path):
    """The manifest's config (what Serve and `ltray recommend` read back) is the latest run's, also when
    the data stage is reused and only later stages redo their work (a new blend setting: the rank stage).
    It used to be written with the data stage only, so a run folder re-ranked under a new cold order
    was served and replayed with the old one."""
    from ltray.artifacts import ArtifactStore
    from ltray.config import Config
    from ltray.pipeline import stage_data

    cfg = Config.model_validate({"data": {"synthetic": {"n_users": 60, "n_items": 80}}})
    store = ArtifactStore(tmp_path / "run")
    stage_data(store, cfg, holdout=True, check_sizes=False)
    version = store.stage_info("data")["version"]
    changed = cfg.model_copy(update={"blend": cfg.blend.model_copy(update={"cold_order": "profile"})})
    stage_data(store, changed, holdout=True, check_sizes=False)
    assert store.stage_info("data")["version"] == version
    assert Config.model_validate(store.manifest()["config"]) == changed != cfg


def test_evaluation_lists_equal_one_user_at_a_time(synthetic_run):
    """recommend_rows recalls users in chunks (one FAISS search per chunk): the lists must be what each
    user's own request gives, across a chunk boundary and for a user the model does not know."""
    import numpy as np

    from ltray.recommend import load_recommender

    _, art, _, _ = synthetic_run
    rec = load_recommender(art)
    users = np.array([*rec.models.user_ids[:300], "nobody-knows-me"])
    from ltray.blend import BlendSetting

    own, asked = BlendSetting(), BlendSetting(tail_share=0.4, quota_by="uniform")  # a share asked for: not scaled
    rows = rec.recommend_rows(users, 20, settings=[own, asked])
    for r, u in enumerate(users):
        alone = rec.recommend(u, k=20, explain=False)["item_idx"].to_numpy()
        np.testing.assert_array_equal(rows[own][r, : len(alone)], alone, err_msg=u)
        shared = rec.recommend(u, k=20, tail_share=0.4, explain=False)["item_idx"].to_numpy()
        np.testing.assert_array_equal(rows[asked][r, : len(shared)], shared, err_msg=u)


def test_cold_orders_fill_the_cold_quota_alike_in_batch_and_single_requests(synthetic_run):
    """blend.cold_order: profile's cold quota takes the cold candidates nearest the user's profile; under
    every order batch lists equal single requests; the orders give different lists."""
    import numpy as np

    from ltray.blend import BlendSetting
    from ltray.data.segments import Segment
    from ltray.recommend import load_recommender

    _, art, _, _ = synthetic_run
    rec = load_recommender(art)
    rec.cold_share, rec.quota_by = 0.2, "uniform"  # 4 cold slots in every list of 20
    users = rec.models.user_ids[:40]
    seg, lists = rec.models.item_segment, {}
    for order in ("content", "profile", "content_bridge", "content_profile_bridge"):
        rec.cfg = rec.cfg.model_copy(update={"blend": rec.cfg.blend.model_copy(update={"cold_order": order})})
        lists[order] = rec.recommend_rows(users, 20)[BlendSetting()]
        for r, u in enumerate(users):
            np.testing.assert_array_equal(rec.recommend(u, k=20, explain=False)["item_idx"].to_numpy(),
                                          lists[order][r], err_msg=f"{u} {order}")
    for r, u in enumerate(users):
        state, cands = rec.rank_candidates(u)
        idx = np.asarray(cands["item_idx"])
        cold = idx[seg[idx] == Segment.COLD]
        nearest = cold[np.argsort(-(rec.models.item_vectors[cold] @ state.profile), kind="stable")[:4]]
        assert set(nearest) <= set(lists["profile"][r]), u  # more cold items may win on score
    assert (lists["content"] != lists["profile"]).any(axis=1).sum() > 0
    assert (lists["content"] != lists["content_bridge"]).any(axis=1).sum() > 0
    assert (lists["content_bridge"] != lists["content_profile_bridge"]).any(axis=1).sum() > 0


def test_serve_stages_fill_the_cold_quota_as_the_recommender_does(synthetic_run):
    """Serve's chain split (CFRecall -> TailRetrieval -> CTRRanker, its stage classes run here in process)
    gives the in-process Recommender's lists with a cold quota under the default cold order, which needs
    the user's ALS factor and the bridge at the ranker. The HTTP tests' run takes no cold slot."""

    from deployments.stages import Artifacts, RankStage, RecallStage, RetrievalStage
    from ltray.data.segments import Segment
    from ltray.recommend import load_recommender
    from ltray.user_state import Ask

    _, art, _, _ = synthetic_run
    stages = Artifacts(str(art))
    recall, retrieval, rank = RecallStage(stages), RetrievalStage(stages), RankStage(stages)
    rec = load_recommender(art)
    assert rec.cfg.blend.cold_order == rank.rec.cfg.blend.cold_order == "content_profile_bridge"
    for r in (rec, rank.rec):
        r.cold_share, r.quota_by = 0.2, "uniform"  # 4 cold slots in every list of 20
    users = [str(u) for u in rec.models.user_ids[:30]]
    recalls = [recall.recall(u) for u in users]
    ranked = rank.rank_many([Ask(u, 20) for u in users], [r.state for r in recalls],
                            retrieval.candidates_many(recalls))
    n_cold = []
    for u, got in zip(users, ranked, strict=True):
        want = rec.recommend(u, k=20, explain=False)
        assert got.top["item_id"].tolist() == want["item_id"].tolist(), u
        n_cold.append(int((rec.models.item_segment[got.top["item_idx"]] == Segment.COLD).sum()))
    assert min(n_cold) >= 4, n_cold


def test_operating_points_score_every_searched_point_as_the_eval_stage_does(synthetic_run, load_benchmark):
    """benchmarks/operating_points.py: every point of the validation curve scored on test; the point the
    run chose gets the eval stage's own numbers, and each point carries its verdict."""
    op = load_benchmark("operating_points")
    _, art, _, _ = synthetic_run
    result = op.score_points(art)
    curve = json.loads((art / "rank" / "blend.json").read_text())["curve"]
    assert len(result["points"]) == len(curve) > 1
    chosen = [p for p in result["points"] if p["setting"] == result["chosen_in_run"]]
    assert len(chosen) == 1
    evaluated = json.loads((art / "eval" / "metrics.json").read_text())["metrics"]["ltray"]
    for k in ("Recall@20", "TailRecall@20", "ColdRecall@20", "Coverage@20"):
        assert chosen[0]["test"][k] == pytest.approx(evaluated[k]), k
    assert {"recall", "not_dominated", "tail", "cold"} <= set(chosen[0]["met"])
    # Points differ on test (the shares change the lists), and the summary names the rule's point.
    assert len({p["test"]["TailRecall@20"] for p in result["points"]}) > 1
    lines = op.summary(result, load_config())
    assert lines[0].startswith(f"synthetic ({art}): {len(curve)} points") and "today's rule takes" in lines[-1]


def test_fit_and_recommend_cli_for_listed_users(ray_cluster, tmp_path, small_synthetic):
    """`ltray fit` on given files + `ltray recommend` give recs for exactly the listed users, no seen items."""
    items = small_synthetic.items[["item_id", "text", "title"]]
    inter = small_synthetic.interactions
    items.to_csv(tmp_path / "items.csv", index=False)
    inter.to_parquet(tmp_path / "interactions.parquet", index=False)
    listed = sorted(inter["user_id"].unique())[:7] + ["someone-new"]
    (tmp_path / "users.txt").write_text("\n".join(listed) + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "ltray.cli"]
    art = tmp_path / "art"
    fit = subprocess.run([*cli, "fit", "--items", str(tmp_path / "items.csv"), "--interactions",
                          str(tmp_path / "interactions.parquet"), "--artifacts", str(art),
                          *[a for s in SMALL for a in ("--set", s)]], capture_output=True, text=True, env=env,
                         timeout=900)
    assert fit.returncode == 0, fit.stderr[-3000:]
    rec = subprocess.run([*cli, "recommend", "--artifacts", str(art), "--users", str(tmp_path / "users.txt"),
                          "--k", "10", "--out", str(tmp_path / "recs.parquet")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert rec.returncode == 0, rec.stderr[-3000:]
    recs = pd.read_parquet(tmp_path / "recs.parquet")
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score", "segment", "source"]
    assert sorted(recs["user_id"].unique()) == sorted(listed)
    for u, g in recs.groupby("user_id"):
        assert list(g["rank"]) == list(range(1, len(g) + 1))
        assert g["item_id"].is_unique and len(g) == 10
        seen = set(inter.loc[inter["user_id"] == u, "item_id"])
        assert not seen & set(g["item_id"]), u
    assert set(recs["segment"]) <= {"head", "tail", "cold"}


def test_bad_input_fails_before_anything_is_written(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,text\na,hello\na,again\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id,ts\nu,a,1\n")
    art = tmp_path / "art"
    r = subprocess.run([sys.executable, "-m", "ltray.cli", "fit", "--items", str(tmp_path / "items.csv"),
                        "--interactions", str(tmp_path / "inter.csv"), "--artifacts", str(art)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "items.csv" in r.stderr and "rows 1, 2" in r.stderr and "item_id" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (art / "manifest.json").exists()
    assert not any(p.name in ("data", "embed") for p in art.iterdir()) if art.exists() else True


def test_error_messages_print_brackets_literally(tmp_path):
    """Paths and hints like ``pip install 'ltray[lightfm]'`` are text, not rich markup."""
    bad = tmp_path / "items[v2].csv"
    bad.write_text("item_id,text\na,hello\na,again\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id,ts\nu,a,1\n")
    r = subprocess.run([sys.executable, "-m", "ltray.cli", "fit", "--items", str(bad),
                        "--interactions", str(tmp_path / "inter.csv"), "--artifacts", str(tmp_path / "art")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "items[v2].csv" in " ".join(r.stderr.split()), r.stderr


@pytest.mark.slow
def test_movielens_targets(ray_cluster, tmp_path_factory):
    """The issue's targets on MovieLens latest-small, measured by the same protocol as the baselines."""
    from ltray.pipeline import run

    # Only ALS among the baselines: these targets are against it (the quality matrix runs them all).
    cfg = load_config(overrides=["data.dataset=movielens-latest-small", "eval.baselines=[als]"])
    art = tmp_path_factory.mktemp("ml") / "art"
    with lines_to(print):
        run(cfg, str(art))
    metrics = json.loads((art / "eval" / "metrics.json").read_text())["metrics"]
    ours, als = metrics["ltray"], metrics["ALS"]
    print(json.dumps({k: {m: round(v, 4) for m, v in t.items() if "@20" in m} for k, t in metrics.items()}))
    # The targets: ALS's accuracy kept, and tail and cold items in front of users that ALS never
    # shows them (validation picks the operating point; test is only read here).
    assert ours["Recall@20"] >= max(0.119, als["Recall@20"])
    assert ours["TailRecall@20"] >= 0.015 > als["TailRecall@20"]
    assert ours["ColdRecall@20"] >= 0.015 > als["ColdRecall@20"]
    assert ours["Coverage@20"] >= 0.22
    assert ours["NDCG@20"] >= als["NDCG@20"]


@pytest.mark.slow
def test_amazon_office_targets(ray_cluster, tmp_path_factory):
    """A catalog other than MovieLens, default config: ltray is not dominated by any tuned baseline, keeps
    the best CF baseline's recall and brings more of the tail (ltray.eval.verdict states the targets)."""
    from ltray.eval.verdict import verdict
    from ltray.pipeline import run

    cfg = load_config(overrides=["data.dataset=amazon-office-2014-5core"])
    art = tmp_path_factory.mktemp("office") / "art"
    with lines_to(print):
        run(cfg, str(art))
    metrics = json.loads((art / "eval" / "metrics.json").read_text())["metrics"]
    v = verdict(metrics)
    print(json.dumps(v, default=str))
    assert {"ALS", "ItemKNN", "EASE", "RP3beta", "ContentKNN"} <= set(metrics)
    assert v["not_dominated"]["met"], v
    assert v["recall"]["met"] and v["tail"]["met"], v
    assert v["cold"]["met"] is not False, v
