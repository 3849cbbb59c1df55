"""The embedded synthetic dataset: long tail, determinism, sizes, topic-coherent text, topical users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ltray.config import DataConfig, SyntheticConfig
from ltray.data import COLD, compute_segments, global_time_cut, load_dataset, temporal_holdout
from ltray.data.synthetic import TOPICS, _titles_and_texts, generate


@pytest.fixture(scope="module")
def default_ds():
    return generate(SyntheticConfig())


@pytest.fixture(scope="module")
def untopical_ds():
    """The same generator with topics switched off: the control for every topic claim."""
    return generate(SyntheticConfig(topic_affinity=0.0))


def _topic_of(ds) -> pd.Series:
    return ds.items.set_index("item_id")["topic"]


def _top_topic_share(ds, k: int = 3) -> float:
    """Mean share of a user's interactions that fall in the user's k most used topics."""
    inter = ds.interactions.assign(topic=ds.interactions["item_id"].map(_topic_of(ds)))
    per = inter.groupby(["user_id", "topic"]).size().rename("n").reset_index()
    top = per.sort_values("n", ascending=False).groupby("user_id").head(k).groupby("user_id")["n"].sum()
    return float((top / inter.groupby("user_id").size()).mean())


def test_popularity_has_a_long_tail(default_ds):
    counts = default_ds.interactions["item_id"].value_counts()
    counts = counts.reindex(default_ds.items["item_id"], fill_value=0)
    ranked = np.sort(counts.to_numpy())[::-1]
    top20 = ranked[: len(ranked) // 5].sum() / ranked.sum()
    assert 0.70 <= top20 <= 0.90, top20
    # A real tail: many items are rare, and the most popular is far above the median.
    assert ranked[0] > 20 * max(1, np.median(ranked))
    assert (ranked[ranked > 0] <= 3).mean() > 0.2


def test_same_seed_same_data_other_seed_other_data():
    cfg = SyntheticConfig(n_items=400, n_users=120, seed=11)
    a, b = generate(cfg), generate(cfg)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    c = generate(SyntheticConfig(n_items=400, n_users=120, seed=12))
    assert not a.interactions.equals(c.interactions)
    assert a.items["text"].tolist() != c.items["text"].tolist()


@pytest.mark.parametrize(("n_items", "n_users", "per_user"), [(300, 80, 10.0), (1200, 250, 20.0)])
def test_sizes_follow_the_config(n_items, n_users, per_user):
    ds = generate(SyntheticConfig(n_items=n_items, n_users=n_users, interactions_per_user=per_user))
    assert ds.n_items == n_items
    assert ds.n_users == n_users
    per = ds.interactions.groupby("user_id").size()
    assert per.mean() == pytest.approx(per_user, rel=0.15)
    assert per.min() >= 5  # every user can be split


def test_load_dataset_builds_it_from_the_config():
    cfg = DataConfig(synthetic=SyntheticConfig(n_items=250, n_users=60, seed=3))
    ds = load_dataset(cfg)
    pd.testing.assert_frame_equal(ds.interactions, generate(cfg.synthetic).interactions)
    assert ds.name == "synthetic" and ds.n_items == 250


def test_canonical_tables(default_ds):
    items, inter = default_ds.items, default_ds.interactions
    assert items["item_id"].is_unique
    assert all(isinstance(t, str) and t.strip() for t in items["text"])
    assert list(inter.columns) == ["user_id", "item_id", "ts", "weight"]
    assert inter["ts"].dtype == np.int64
    assert (inter["weight"] == 1.0).all()
    assert inter["item_id"].isin(items["item_id"]).all()
    assert not inter.duplicated(["user_id", "item_id"]).any()


def test_titles_are_unique(default_ds):
    """A report that says "X because they liked X" needs every title to name one item."""
    titles = default_ds.items["title"]
    assert titles.is_unique, titles[titles.duplicated(keep=False)].head().tolist()
    # One (brand, attribute, noun) drawn far past the line-name count still names distinct items.
    titles, texts = _titles_and_texts([("coffee", "Acme", "manual", "arabica", "burr grinder")] * 500, seed=7)
    assert len(set(titles)) == 500 and len(set(texts)) == 500
    assert all(t.startswith("Acme ") and t.endswith(" manual burr grinder") for t in titles)


def test_titles_draw_from_their_own_stream():
    """Distinct titles do not move the interactions: those come from the seed's main stream."""
    cfg = SyntheticConfig(n_items=400, n_users=120, seed=11)
    ds = generate(cfg)
    rng = np.random.default_rng(cfg.seed)
    topics = rng.integers(cfg.n_topics, size=cfg.n_items)
    assert ds.items["topic"].tolist() == [TOPICS[t % len(TOPICS)][0] for t in topics]
    # Pinned: the interactions this seed made before titles got product lines.
    assert len(ds.interactions) == 3491
    assert ds.interactions.head(3).to_numpy().tolist() == [
        ["u0", "i95", 1601186033, 1.0], ["u0", "i217", 1601315085, 1.0], ["u0", "i251", 1601557045, 1.0]]


def test_texts_are_topic_coherent(default_ds):
    vocab = {cat: (nouns, attrs) for cat, nouns, attrs in TOPICS}
    for topic, group in default_ds.items.groupby("topic"):
        nouns, attrs = vocab[topic]
        # Every item of a topic names its category and one of the topic's nouns and attributes.
        assert group["text"].str.contains(f"Category: {topic}.", regex=False).all()
        assert group["title"].map(lambda t, ns=nouns: any(t.endswith(n) for n in ns)).all()
        assert group["text"].map(lambda t, at=attrs: sum(a in t for a in at) >= 2).all()
        # ... and texts inside a topic differ.
        assert group["text"].nunique() > 0.5 * len(group)
    assert default_ds.items["topic"].nunique() == SyntheticConfig().n_topics


def test_users_concentrate_on_few_topics(default_ds, untopical_ds):
    topical, control = _top_topic_share(default_ds), _top_topic_share(untopical_ds)
    assert topical > 0.5
    assert topical > 1.5 * control


def test_tail_items_text_tells_who_wants_them(default_ds, untopical_ds):
    """A held-out tail item's topic is usually among its user's top training topics."""

    def hit_rate(ds) -> float:
        train, test = temporal_holdout(ds.interactions)
        tail = set(compute_segments(ds.items["item_id"], train).ids("tail"))
        topic = _topic_of(ds)
        per = train.assign(topic=train["item_id"].map(topic)).groupby(["user_id", "topic"]).size()
        top3 = set(per.rename("n").reset_index().sort_values("n", ascending=False)
                   .groupby("user_id").head(3)[["user_id", "topic"]].itertuples(index=False, name=None))
        held = test[test["item_id"].isin(tail)]
        assert len(held) > 500
        return float(np.mean([(u, topic[i]) in top3 for u, i in zip(held["user_id"], held["item_id"],
                                                                      strict=True)]))

    topical, control = hit_rate(default_ds), hit_rate(untopical_ds)
    assert topical > 0.45
    assert topical > 3 * control


def test_some_items_are_cold_under_a_time_split(default_ds):
    for fraction in (0.1, 0.2):
        train, test, _ = global_time_cut(default_ds.interactions, fraction)
        seg = compute_segments(default_ds.items["item_id"], train)
        cold = set(seg.ids(COLD))
        # Items released late are seen only in test: cold items the evaluation can score.
        seen_only_in_test = set(test["item_id"]) & cold
        assert len(seen_only_in_test) > 0.01 * default_ds.n_items
    train, _ = temporal_holdout(default_ds.interactions)
    assert compute_segments(default_ds.items["item_id"], train).counts()[COLD] > 0
