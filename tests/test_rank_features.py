"""Ranking features and sampling: one FeatureBuilder for training and scoring, no Ray needed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from rank_helpers import build_case, sample_tables

from ltray.config import RankConfig
from ltray.rank import SOURCE_FLAGS, FeatureBuilder, FeatureSpecError
from ltray.rank.features import arrow_to_features
from ltray.rank.sampling import time_validation_split
from ltray.rank.train import write_samples
from ltray.user_state import UserState

CFG = RankConfig(id_buckets=4096, text_dim=8, negatives_per_positive=4)


@pytest.fixture(scope="module")
def case(small_synthetic):
    ctx, train_pos, val_pos, cands, history = build_case(small_synthetic, context_fraction=0.6)
    train, val = sample_tables(ctx, train_pos, val_pos, cands, history, CFG)
    builder = FeatureBuilder(CFG).fit(ctx, np.flatnonzero(ctx.item_pop > 0), table=train)
    return {"ctx": ctx, "train_pos": train_pos, "val_pos": val_pos, "cands": cands, "history": history,
            "train": train, "val": val, "builder": builder}


def test_training_path_and_scoring_path_give_identical_features(case, tmp_path):
    ctx, builder, train = case["ctx"], case["builder"], case["train"]
    # Training path: features built in bulk, written to Parquet, read back as the workers read them.
    write_samples(builder, ctx, train, str(tmp_path / "train"))
    stored = arrow_to_features(pq.read_table(tmp_path / "train"))
    assert stored["dense"].shape == (len(train), len(builder.dense_names()))
    np.testing.assert_array_equal(stored["label"], train["label"].to_numpy())
    # Scoring path: one (user, item) at a time, in another order, some users passed as a UserState.
    rows = np.random.default_rng(1).choice(len(train), size=40, replace=False)
    for i in rows:
        one = train.iloc[[i]][["user_id", "item_idx", *SOURCE_FLAGS]]
        u = ctx.user_index[one["user_id"].iloc[0]]
        override = {one["user_id"].iloc[0]: UserState(ctx.user_factors[u], ctx.user_profiles[u], n=ctx.user_n[u],
                                                      last_ts=int(ctx.user_last_ts[u]))} if i % 2 else None
        f = builder.build(ctx, one, users_override=override)
        for key in ("user_hash", "item_hash", "dense"):
            np.testing.assert_array_equal(f[key][0], stored[key][i], err_msg=f"{key} row {i}")


def test_builder_save_load_gives_same_features_and_spec(case, tmp_path):
    ctx, builder, val = case["ctx"], case["builder"], case["val"]
    builder.save(tmp_path)
    loaded = FeatureBuilder.load(tmp_path)
    assert loaded.spec() == builder.spec()
    a, b = builder.build(ctx, val), loaded.build(ctx, val)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_spec_lists_every_feature_family(case):
    spec = case["builder"].spec()
    names = spec["dense_names"]
    for name in ("profile_cosine", "als_score", "bridge_score", "log_item_pop", "segment_tail", "log_user_n",
                 "log_days_since_last", *SOURCE_FLAGS):
        assert name in names
    assert sum(n.startswith("item_text_") for n in names) == CFG.text_dim == spec["text_dim"]
    assert sum(n.startswith("user_text_") for n in names) == CFG.text_dim
    assert spec["n_dense"] == len(names) and spec["id_buckets"] == CFG.id_buckets


def test_pca_is_fit_on_training_items_only(case):
    ctx, train = case["ctx"], case["train"]
    train_items = np.flatnonzero(ctx.item_pop > 0)
    a = FeatureBuilder(CFG).fit(ctx, train_items, table=train)
    cold = np.flatnonzero(ctx.item_pop == 0)
    assert len(cold) > 0
    ctx.item_vectors[cold] += 5.0  # cold items change: the learned projection must not
    try:
        b = FeatureBuilder(CFG).fit(ctx, train_items, table=train)
    finally:
        ctx.item_vectors[cold] -= 5.0
    np.testing.assert_allclose(a.pca_components, b.pca_components, atol=1e-6)
    np.testing.assert_allclose(a.pca_mean, b.pca_mean, atol=1e-6)


def test_id_hash_is_stable_across_processes(case):
    ctx, builder = case["ctx"], case["builder"]
    table = pd.DataFrame({"user_id": ["u1", "u7", "nobody"], "item_idx": [0, 5, 9]})
    here = builder.build(ctx, table)
    code = ("import numpy as np; from ltray.rank.features import stable_hash; "
            "print(*(stable_hash(np.char.add('u:', np.array(['u1', 'u7', 'nobody']))) % 4096).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.split()
    assert [int(x) for x in out] == here["user_hash"].tolist()
    assert here["item_hash"].tolist() == (ctx.item_hash[[0, 5, 9]] % 4096).tolist()


def test_unknown_user_is_scored_as_cold_and_override_is_used(case):
    ctx, builder = case["ctx"], case["builder"]
    names = builder.dense_names()
    als, cos = names.index("als_score"), names.index("profile_cosine")
    table = pd.DataFrame({"user_id": ["stranger", "stranger"], "item_idx": [0, 1]})
    cold = builder.build(ctx, table)["dense"] * builder.dense_std + builder.dense_mean
    np.testing.assert_allclose(cold[:, als], 0.0, atol=1e-5)
    np.testing.assert_allclose(cold[:, cos], 0.0, atol=1e-5)
    state = UserState(factor=ctx.item_factors[0], profile=ctx.item_vectors[0], n=3, last_ts=ctx.now_ts)
    warm = builder.build(ctx, table, users_override={"stranger": state})["dense"] * builder.dense_std \
        + builder.dense_mean
    assert warm[0, cos] == pytest.approx(1.0, abs=1e-4)  # the profile is item 0's own vector
    assert warm[0, als] > 0


def test_debias_fixes_popularity_and_nothing_else(case):
    ctx, builder, val = case["ctx"], case["builder"], case["val"]
    col = builder.pop_column
    plain = builder.build(ctx, val)["dense"]
    flat = builder.build(ctx, val, debias_popularity=True)["dense"]
    assert plain[:, col].std() > 0.5
    np.testing.assert_allclose(flat[:, col], 0.0, atol=1e-6)  # the training mean, standardised
    # The item's share of its text cluster is popularity too: debiased, every item of a cluster has the same.
    names = builder.dense_names()
    share = [names.index(f"item_cluster{k}_share") for k in builder.text_clusters]
    raw = flat * builder.dense_std + builder.dense_mean
    _, _, clusters = builder._item_arrays(ctx)
    items = val["item_idx"].to_numpy()
    for j, c in zip(share, clusters, strict=True):
        assert plain[:, j].std() > 0.1
        np.testing.assert_allclose(raw[:, j], -np.log(c.size[c.label[items]]), rtol=1e-5)
    others = ~np.isin(np.arange(plain.shape[1]), [col, *share])
    np.testing.assert_array_equal(plain[:, others], flat[:, others])


def test_build_rejects_a_context_of_another_width(case):
    ctx, builder = case["ctx"], case["builder"]
    from dataclasses import replace
    narrow = replace(ctx, item_vectors=ctx.item_vectors[:, :16], user_profiles=ctx.user_profiles[:, :16])
    with pytest.raises(FeatureSpecError, match="text 16"):
        builder.build(narrow, case["val"].head(3))


def test_negatives_avoid_positives_and_follow_the_mix(case):
    ctx, train_pos, cands, history = case["ctx"], case["train_pos"], case["cands"], case["history"]
    table = case["train"]
    pos, neg = table[table["label"] == 1], table[table["label"] == 0]
    assert len(pos) == len(train_pos)
    assert len(neg) >= 0.97 * CFG.negatives_per_positive * len(pos)
    forbidden = set(zip(history["user_id"], history["item_idx"], strict=True))
    assert not any(p in forbidden for p in zip(neg["user_id"], neg["item_idx"], strict=True))
    # Hard negatives come from the candidates: about mix[2] of negatives are candidates the user did not take.
    cand_pairs = set(zip(cands["user_id"], cands["item_idx"], strict=True))
    in_cands = np.mean([p in cand_pairs for p in zip(neg["user_id"], neg["item_idx"], strict=True)])
    assert in_cands >= CFG.negative_mix[2] - 0.02
    # Popular negatives are drawn by count**0.75: negatives are more popular than uniform draws.
    assert ctx.item_pop[neg["item_idx"]].mean() > 1.5 * ctx.item_pop.mean()


def test_flags_come_from_candidates_for_positives_and_negatives_alike(case):
    table, cands = case["train"], case["cands"]
    merged = table.merge(cands, on=["user_id", "item_idx"], how="left", suffixes=("", "_c"))
    for c in SOURCE_FLAGS:
        expect = merged[f"{c}_c"].fillna(0).to_numpy(np.float32)
        np.testing.assert_array_equal(merged[c].to_numpy(), expect)
    for label in (0, 1):
        assert table.loc[table["label"] == label, "from_cf"].sum() > 0  # neither label owns a flag


def test_sampling_is_seeded(case):
    from ltray.rank.sampling import sample_training_table
    ctx, train_pos, cands = case["ctx"], case["train_pos"], case["cands"]
    a = sample_training_table(train_pos, cands, ctx, CFG, np.random.default_rng(3))
    b = sample_training_table(train_pos, cands, ctx, CFG, np.random.default_rng(3))
    pd.testing.assert_frame_equal(a, b)


def test_time_validation_split_validates_on_later_interactions():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": rng.integers(50, size=1000).astype(str), "item_idx": rng.integers(80, size=1000),
                       "ts": rng.integers(0, 10_000, size=1000)})
    train, val = time_validation_split(df, 0.2)
    assert len(train) + len(val) == len(df)
    assert train["ts"].max() < val["ts"].min()
    assert 0.17 < len(val) / len(df) < 0.23
    with pytest.raises(ValueError, match="distinct timestamps"):
        time_validation_split(df.assign(ts=5), 0.2)


def test_per_request_column_form_gives_the_training_features(case, tmp_path):
    """Serve's form -- plain column arrays, one user id for all of a user's candidates -- is the same
    `build` and gives, bit for bit, what training wrote for those rows."""
    ctx, builder, train = case["ctx"], case["builder"], case["train"]
    write_samples(builder, ctx, train, str(tmp_path / "train"))
    stored = arrow_to_features(pq.read_table(tmp_path / "train"))
    for user in train["user_id"].drop_duplicates().sample(8, random_state=0):
        rows = np.flatnonzero(train["user_id"].to_numpy() == user)
        part = train.iloc[rows]
        cols = {"user_id": user, "item_idx": part["item_idx"].to_numpy(),
                **{c: part[c].to_numpy() for c in SOURCE_FLAGS}}
        f = builder.build(ctx, cols)
        for key in ("user_hash", "item_hash", "dense"):
            np.testing.assert_array_equal(f[key], stored[key][rows], err_msg=f"{key} user {user}")


def test_text_cluster_shares_follow_the_history_and_popularity(case):
    """user share = (history in the item's cluster + a x prior) / (history + a); item share = (pop + 1) / cluster's."""
    from dataclasses import replace

    import scipy.sparse as sp
    ctx, val = case["ctx"], case["val"]
    builder = FeatureBuilder(RankConfig(id_buckets=4096, text_dim=8, text_clusters=(4, 16), cluster_smoothing=2.0))
    rng = np.random.default_rng(3)
    n_users, n_items = len(ctx.user_ids), ctx.n_items
    seen = sp.random(n_users, n_items, density=0.05, format="csr", random_state=4)
    seen.data[:] = 1.0
    ctx = replace(ctx, user_seen=seen)
    builder.fit(ctx, np.flatnonzero(ctx.item_pop > 0), table=case["train"])
    assert [len(c) for c in builder.cluster_centroids] == [4, 16]
    raw = builder.build(ctx, val)["dense"] * builder.dense_std + builder.dense_mean
    names = builder.dense_names()
    users = val["user_id"].to_numpy()
    items = val["item_idx"].to_numpy()
    for k in (4, 16):
        # Each item's cluster, recomputed: the nearest centroid by cosine.
        label = (ctx.item_vectors.astype(np.float64) @ builder.cluster_centroids[(4, 16).index(k)].T).argmax(1)
        pop = ctx.item_pop.astype(np.float64) + 1.0
        mass = np.bincount(label, weights=pop, minlength=k)
        for r in rng.choice(len(val), size=30, replace=False):
            hist = seen[ctx.user_index[users[r]]].indices
            c = label[items[r]]
            want_user = ((label[hist] == c).sum() + 2.0 * mass[c] / mass.sum()) / (len(hist) + 2.0)
            assert raw[r, names.index(f"user_cluster{k}_share")] == pytest.approx(np.log(want_user), rel=1e-4)
            assert raw[r, names.index(f"item_cluster{k}_share")] == pytest.approx(np.log(pop[items[r]] / mass[c]),
                                                                                 rel=1e-4)
    # A user passed as a state with the same history gets the same shares as from the context.
    u = users[0]
    row = ctx.user_index[u]
    state = UserState(ctx.user_factors[row], ctx.user_profiles[row], seen=seen[row].indices, n=ctx.user_n[row],
                      last_ts=int(ctx.user_last_ts[row]))
    one = val[val["user_id"] == u]
    np.testing.assert_array_equal(builder.build(ctx, one)["dense"],
                                  builder.build(ctx, one, users_override={u: state})["dense"])
    # Without clusters the columns are gone.
    plain = FeatureBuilder(RankConfig(id_buckets=4096, text_dim=8, text_clusters=())).fit(
        ctx, np.flatnonzero(ctx.item_pop > 0), table=case["train"])
    assert not [n for n in plain.dense_names() if "cluster" in n]
