"""Candidate generation on a small fitted model: the cold-item search and its round trip through the store."""

from __future__ import annotations

import numpy as np
import pytest

from ltray.candidates import CandidateGenerator, CandidateModels
from ltray.data.segments import Segment, segment_code_array
from ltray.data.split import temporal_holdout


@pytest.fixture(scope="module")
def fitted(small_synthetic, small_config):
    ds = small_synthetic
    train, _ = temporal_holdout(ds.interactions, 0.2, 5)
    item_ids = ds.items["item_id"].to_numpy().astype(str)
    # Items nobody touched in train, with random text vectors: membership, not meaning, is tested here.
    seg = segment_code_array(item_ids, train, 0.8)
    x = np.random.default_rng(0).normal(size=(len(item_ids), 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return CandidateModels.fit(train, item_ids, x, seg, small_config), small_config


def test_cold_index_holds_exactly_the_cold_items(fitted):
    models, _ = fitted
    cold = np.flatnonzero(models.item_segment == Segment.COLD)
    assert len(cold) > 10  # the synthetic split leaves cold items, or this test says little
    np.testing.assert_array_equal(models.cold_index.ids(), cold)


def test_tail_part_adds_n_cold_cold_items_the_tail_search_crowds_out(fitted):
    models, cfg = fitted
    gen = CandidateGenerator(models, cfg)
    cold = models.item_segment == Segment.COLD
    user = models.user_ids[0]
    st = gen.state(user)
    without = gen.candidate_columns(st, n_cold=0)
    with_cold = gen.candidate_columns(st, n_cold=30)
    n_before = int(cold[without["item_idx"]].sum())
    n_after = int(cold[with_cold["item_idx"]].sum())
    assert n_after >= min(30, int(cold.sum())) and n_after > n_before
    # the added items come from the text search: flagged as tail, with their cosine as tail_score
    added = np.setdiff1d(with_cold["item_idx"], without["item_idx"])
    pos = np.searchsorted(with_cold["item_idx"], added)
    assert cold[added].all() and (with_cold["from_tail"][pos] == 1).all()
    assert np.isfinite(with_cold["tail_score"][pos]).all()
    assert not np.isin(with_cold["item_idx"], st.seen).any()


def test_cold_index_survives_save_and_load_and_is_rebuilt_for_older_runs(fitted, tmp_path):
    models, _ = fitted
    models.save(tmp_path / "cf", tmp_path / "index")
    back = CandidateModels.load(tmp_path / "cf", tmp_path / "index", models.item_ids, models.item_vectors)
    np.testing.assert_array_equal(back.cold_index.ids(), models.cold_index.ids())
    (tmp_path / "index" / "cold.faiss").unlink()  # a run saved before the cold index existed
    older = CandidateModels.load(tmp_path / "cf", tmp_path / "index", models.item_ids, models.item_vectors)
    np.testing.assert_array_equal(older.cold_index.ids(), models.cold_index.ids())
    q = models.item_vectors[:3]
    np.testing.assert_array_equal(older.cold_index.search(q, 5)[1], models.cold_index.search(q, 5)[1])
    no_faiss = CandidateModels.load(tmp_path / "cf", tmp_path / "index", models.item_ids, models.item_vectors,
                                    faiss_indexes=False)
    assert no_faiss.cold_index is None


def test_batched_recall_equals_one_user_at_a_time(fitted):
    """Serve batches concurrent requests into one FAISS search per index: the parts must not change."""
    models, cfg = fitted
    gen = CandidateGenerator(models, cfg)
    states = [gen.state(u) for u in models.user_ids[:12]]
    # a session user (few items, short seen list) batched with known users (long seen lists)
    states.append(gen.state("someone-new", recent_items=list(models.item_ids[:3])))
    many = gen.recall_parts_many(states, 40, 30, 20, 10)
    for st, batched in zip(states, many, strict=True):
        alone = gen.recall_parts(st, 40, 30, 20, 10)
        assert [p[0] for p in batched] == [p[0] for p in alone] == ["cf", "tail", "bridge"]
        for (_, ids_b, sc_b), (_, ids_a, sc_a) in zip(batched, alone, strict=True):
            np.testing.assert_array_equal(ids_b, ids_a)
            np.testing.assert_allclose(sc_b, sc_a, rtol=1e-5, atol=1e-6)


def test_candidates_in_chunks_equal_one_user_at_a_time(fitted):
    """The offline loops recall users in chunks: each user's candidate columns must not change."""
    models, cfg = fitted
    gen = CandidateGenerator(models, cfg)
    states = [gen.state(u) for u in models.user_ids[:11]]
    states.insert(4, None)  # an unknown user gets the fallback, wherever it sits in a chunk
    chunked = list(gen.candidate_columns_many(states, chunk=5))
    assert len(chunked) == len(states)
    for st, cols in zip(states, chunked, strict=True):
        alone = gen.candidate_columns(st)
        assert cols.keys() == alone.keys()
        np.testing.assert_array_equal(cols["item_idx"], alone["item_idx"])
        for c in alone:
            if np.asarray(alone[c]).dtype.kind == "f":
                np.testing.assert_allclose(cols[c], alone[c], rtol=1e-5, atol=1e-6, err_msg=c)
            else:
                np.testing.assert_array_equal(cols[c], alone[c], err_msg=c)


def test_tail_affinity_is_each_users_share_of_distinct_items_outside_the_head(fitted, small_synthetic):
    models, _ = fitted
    train, _ = temporal_holdout(small_synthetic.interactions, 0.2, 5)
    row = {it: i for i, it in enumerate(models.item_ids)}
    by_user = train.groupby("user_id")["item_id"].apply(lambda s: sorted({row[i] for i in s}))
    expect = np.array([np.mean(models.item_segment[by_user[u]] != Segment.HEAD)
                       for u in models.user_ids])
    np.testing.assert_allclose(models.user_tail_affinity, expect, rtol=1e-6)
    assert expect.std() > 0.05  # users differ, or the quotas would not spread
    assert models.mean_tail_affinity == pytest.approx(expect.mean(), rel=1e-6)


def test_state_carries_the_affinity_of_the_history_it_describes(fitted):
    models, cfg = fitted
    gen = CandidateGenerator(models, cfg)
    user = models.user_ids[0]
    assert gen.state(user).tail_affinity == pytest.approx(float(models.user_tail_affinity[0]))
    head = np.flatnonzero(models.item_segment == Segment.HEAD)[:4]
    tail = np.flatnonzero(models.item_segment == Segment.TAIL)[:4]
    session = gen.state("someone-new", list(models.item_ids[np.concatenate([head, tail[:1]])]))
    assert session.tail_affinity == pytest.approx(1 / 5)
    folded = gen.state(user, list(models.item_ids[tail]))  # new items join the known history
    both = np.union1d(gen.state(user).seen, tail)
    assert folded.tail_affinity == pytest.approx(np.mean(models.item_segment[both] != Segment.HEAD))


def test_tail_search_is_the_exact_best_unseen_items_over_a_users_queries(fitted):
    """The search asks FAISS for n + (seen items in the index) per query, not n + all seen: with a flat
    index the result must still be the brute-force best n unseen items, each at its best query's score."""
    from ltray.candidates import _best_per_item

    models, _ = fitted
    index = models.tail_index
    in_index = index.ids()
    head = np.flatnonzero(~np.isin(np.arange(len(models.item_segment)), in_index))
    rng = np.random.default_rng(1)
    seen = [np.concatenate([head[:300], rng.choice(in_index, 12, replace=False)]), in_index[:3], head[:5]]
    q = models.item_vectors[rng.choice(len(models.item_vectors), 7, replace=False)]
    bounds = np.array([0, 3, 5, 7])
    assert index.contains(seen[0]).sum() == 12 and not index.contains(head).any()
    got = _best_per_item(index, q, bounds, 10, seen)
    vectors = models.item_vectors[in_index] / np.linalg.norm(models.item_vectors[in_index], axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    for u, (ids, scores) in enumerate(got):
        best = (qn[bounds[u]:bounds[u + 1]] @ vectors.T).max(axis=0)
        best[np.isin(in_index, seen[u])] = -np.inf
        top = np.argsort(-best, kind="stable")[:10]
        np.testing.assert_array_equal(np.sort(ids), np.sort(in_index[top]))
        np.testing.assert_allclose(np.sort(scores), np.sort(best[top]), rtol=1e-5, atol=1e-5)
