"""The stages against one artifact store: data -> embed -> cf + index -> rank -> eval.

`fit` trains every stage on the given interactions; `run` splits by time first,
fits on train, and evaluates on test against the baselines. Each stage checks
its fingerprint and is a no-op when its inputs and config are unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ltray.artifacts import ArtifactStore, fingerprint_of
from ltray.candidates import CandidateModels
from ltray.config import Config
from ltray.data import Dataset, temporal_holdout
from ltray.data.checks import load_checked
from ltray.data.segments import Segment, segment_code_array

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    """What the data stage hands on: the catalog, the split and the segments."""

    items: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame | None
    item_segment: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy().astype(str)


@dataclass
class FittedRun:
    """What `fit` hands on: the store and every part fitted so far (None for stages not reached)."""

    store: ArtifactStore
    bundle: Bundle
    vectors: np.ndarray | None = None
    models: CandidateModels | None = None
    ranker: Any = None  # ltray.rank.ranker.Ranker (imported lazily: it pulls in torch)
    blend: dict[str, Any] = field(default_factory=dict)  # the operating point chosen on validation


FIT_STAGES = ("data", "embed", "index", "rank")  # where `fit` may stop (index: cf + index)


# -- data ----------------------------------------------------------------------------
def stage_data(store: ArtifactStore, cfg: Config, holdout: bool, dataset: Dataset | None = None,
               check_sizes: bool = True) -> Bundle:
    """`dataset`: the input already read and checked (`load_checked`: the CLI does it before Ray starts)."""
    t0 = time.perf_counter()
    # Validates, and refuses data too small for the rank stage, before anything is written.
    ds: Dataset = dataset if dataset is not None else load_checked(cfg, holdout, check_sizes)
    fp = fingerprint_of({"sources": ds.sources, "data": cfg.fingerprint("data"), "holdout": holdout,
                         "n": [len(ds.items), len(ds.interactions)]})
    if holdout:
        train, test = temporal_holdout(ds.interactions, cfg.data.test_fraction, cfg.data.min_user_interactions)
    else:
        train, test = ds.interactions.reset_index(drop=True), None
    seg = segment_code_array(ds.items["item_id"], train, cfg.data.head_share)
    bundle = Bundle(ds.items.reset_index(drop=True), train, test, seg)
    if not store.is_current("data", fp):
        with store.writing("data", fingerprint=fp, dataset=ds.name) as w:
            # Row groups of embed.block_rows: the embedding stage streams them as its blocks.
            pq.write_table(pa.Table.from_pandas(bundle.items, preserve_index=False), w / "items.parquet",
                           row_group_size=cfg.embed.block_rows)
            pq.write_table(pa.Table.from_pandas(train, preserve_index=False), w / "train.parquet")
            if test is not None:
                pq.write_table(pa.Table.from_pandas(test, preserve_index=False), w / "test.parquet")
            segs = pd.DataFrame({"item_id": bundle.item_ids, "segment": seg})
            pq.write_table(pa.Table.from_pandas(segs, preserve_index=False), w / "segments.parquet")
            w.info.update(items=len(ds.items), train=len(train), test=0 if test is None else len(test),
                          segments={s.label: int((seg == s).sum()) for s in Segment})
        log.info("data: %s items, %s train / %s test interactions", f"{len(ds.items):,}", f"{len(train):,}",
                 f"{0 if test is None else len(test):,}")
    else:
        log.info("data: unchanged, skipped")
    # Every run records its config, data reused or not: readers (Serve, `ltray recommend`) take the
    # manifest's config, and the stages this run redoes (e.g. rank for a new blend setting) follow it.
    store.update_manifest(config=cfg.to_dict(), inputs=ds.sources, dataset=ds.name)
    bundle.timings["data"] = time.perf_counter() - t0
    return bundle


# -- embed -----------------------------------------------------------------------------
def commit_embed(store: ArtifactStore, cfg: Config) -> dict[str, Any]:
    """The embed stage alone: streams the data stage's Parquet through Ray Data; nothing reaches this process."""
    from ltray.embed.stage import run_embed

    stats = run_embed(store, store.stage_path("data") / "items.parquet", cfg)
    if stats.get("skipped"):
        log.info("embed: unchanged, skipped")
    else:
        log.info("embed: %s encoded, %s carried over (%.0f items/s)", f"{stats.get('encoded', 0):,}",
                 f"{stats.get('carried_over', 0):,}", stats.get("items_per_s", 0))
    return stats


def stage_embed(store: ArtifactStore, cfg: Config, bundle: Bundle) -> np.ndarray:
    from ltray.embed.items import STAGE, fingerprint, load_embeddings

    t0 = time.perf_counter()
    # The catalog is in this process already: check it here rather than in a Ray task (seconds to start).
    if store.is_current(STAGE, fingerprint(bundle.items[["item_id", "text"]], cfg.embed)):
        log.info("embed: unchanged, skipped")
    else:
        commit_embed(store, cfg)
    vectors = load_embeddings(store.stage_path("embed"), bundle.item_ids)
    bundle.timings["embed"] = time.perf_counter() - t0
    return vectors


# -- cf + index ------------------------------------------------------------------------------
def stage_candidates(store: ArtifactStore, cfg: Config, bundle: Bundle, vectors: np.ndarray) -> CandidateModels:
    t0 = time.perf_counter()
    fp = fingerprint_of({"data": store.stage_info("data")["fingerprint"],
                         "embed": store.stage_info("embed")["fingerprint"],
                         "cfg": cfg.fingerprint("cf", "index")})
    if store.is_current("cf", fp) and store.is_current("index", fp):
        log.info("cf + index: unchanged, skipped")
        models = CandidateModels.load(store.stage_path("cf"), store.stage_path("index"), bundle.item_ids, vectors)
    else:
        from ltray.cf.tune import chosen_params, describe_choice, tune_cf

        cf_cfg, search = tune_cf(bundle.train, bundle.item_ids, cfg)
        chosen = chosen_params(cf_cfg)
        if search:
            log.info("cf: %s", describe_choice(cf_cfg, search))
        models = CandidateModels.fit(bundle.train, bundle.item_ids, vectors, bundle.item_segment,
                                     cfg.model_copy(update={"cf": cf_cfg}))
        with store.writing("cf", fingerprint=fp) as wc, store.writing("index", fingerprint=fp) as wi:
            models.save(wc.path, wi.path)
            wc.info.update(users=len(models.user_ids), factors=int(models.als.item_factors.shape[1]),
                           cf_params=chosen, tune=search)
            wi.info.update(tail_items=models.tail_index.ntotal, full_items=models.full_index.ntotal)
        log.info("cf + index: ALS on %s users; tail index %s items", f"{len(models.user_ids):,}",
                 f"{models.tail_index.ntotal:,}")
    bundle.timings["cf+index"] = time.perf_counter() - t0
    return models


# -- rank -------------------------------------------------------------------------------------
def stage_rank(store: ArtifactStore, cfg: Config, bundle: Bundle, vectors: np.ndarray):
    """Train the CTR model on candidates from models fitted on an earlier slice of train.

    Train is split per user by time into fit / valid. Candidate models are fitted on
    `fit`; half of the users' `valid` interactions label a ranker's training data, the
    other half chooses the operating point with it, so the choice is never made on data that
    ranker saw; the ranker kept then learns from all of them (`rank.refit_on_all`).
    """
    from ltray.cf.tune import with_cf
    from ltray.rank.ranker import Ranker

    t0 = time.perf_counter()
    cfg = with_cf(cfg, (store.stage_info("cf") or {}).get("cf_params"))  # ALS values chosen on validation
    fp = fingerprint_of({"data": store.stage_info("data")["fingerprint"],
                         "embed": store.stage_info("embed")["fingerprint"],
                         "cfg": cfg.fingerprint("cf", "index", "rank", "blend", "eval")})
    if store.is_current("rank", fp):
        log.info("rank: unchanged, skipped")
        path = store.stage_path("rank")
        bundle.timings["rank"] = time.perf_counter() - t0
        return Ranker.load(path), json.loads((path / "blend.json").read_text())
    from ltray.tuning import train_ranker_and_choose_blend

    with store.writing("rank", fingerprint=fp) as w:
        result = train_ranker_and_choose_blend(bundle, vectors, cfg, w.path)
        (w / "blend.json").write_text(json.dumps(result["blend"], indent=2))
        w.info.update(metrics=result["metrics"], tail_share=result["blend"]["tail_share"])
    path = store.stage_path("rank")
    bundle.timings["rank"] = time.perf_counter() - t0
    return Ranker.load(path), json.loads((path / "blend.json").read_text())


def fit(cfg: Config, artifacts: str, holdout: bool = False,
        dataset: Dataset | None = None, until: str = "rank") -> FittedRun:
    """The stages up to `until` (one of FIT_STAGES) on the given interactions (no holdout unless asked);
    `dataset` as for `stage_data`."""
    if until not in FIT_STAGES:
        raise ValueError(f"until must be one of {', '.join(FIT_STAGES)}, not {until!r}")
    store = ArtifactStore(artifacts)
    run = FittedRun(store, stage_data(store, cfg, holdout, dataset))
    reach = FIT_STAGES[: FIT_STAGES.index(until) + 1]
    if "embed" in reach:
        run.vectors = stage_embed(store, cfg, run.bundle)
    if "index" in reach:
        run.models = stage_candidates(store, cfg, run.bundle, run.vectors)
    if "rank" in reach:
        run.ranker, run.blend = stage_rank(store, cfg, run.bundle, run.vectors)
    store.update_manifest(timings=run.bundle.timings)
    return run


# -- stages from the store, for a job's workers -------------------------------------------------------
# A job runs these in Ray tasks, so the catalog, the factors and the indexes live on a worker and the
# job's driver holds none of them: its memory does not grow with the catalog. Plain arguments in,
# small dicts out.
EVAL_INPUTS = ("data", "embed", "cf", "index", "rank")  # the stages whose versions the report depends on


def load_bundle(store: ArtifactStore) -> Bundle:
    """The committed data stage read back: what ``stage_data`` handed on when it wrote it."""
    path = store.stage_path("data")
    items = pq.read_table(path / "items.parquet").to_pandas()
    train = pq.read_table(path / "train.parquet").to_pandas()
    test = pq.read_table(path / "test.parquet").to_pandas() if (path / "test.parquet").exists() else None
    seg = pq.read_table(path / "segments.parquet")
    if seg.column("item_id").to_pylist() != items["item_id"].astype(str).tolist():
        raise ValueError(f"{path}: segments.parquet and items.parquet list different items")
    return Bundle(items, train, test, seg.column("segment").to_numpy().astype(np.int8))


def commit_data(cfg: Config, artifacts: str, holdout: bool) -> dict[str, int]:
    """The data stage; returns counts only."""
    bundle = stage_data(ArtifactStore(artifacts), cfg, holdout)
    return {"items": len(bundle.items), "train": len(bundle.train),
            "test": 0 if bundle.test is None else len(bundle.test)}


def eval_fingerprint(store: ArtifactStore, cfg: Config) -> str:
    stages = store.manifest().get("stages", {})
    return fingerprint_of({"inputs": {s: (stages.get(s) or {}).get("version") for s in EVAL_INPUTS},
                           "cfg": cfg.fingerprint("eval", "blend")})


def evaluate_if_changed(run: FittedRun, cfg: Config) -> Path:
    """The eval stage, skipped when the committed inputs and the eval config are unchanged.

    ``stage_eval`` always re-evaluates; this records a fingerprint of the stage versions it read in
    the eval manifest entry, so re-running a finished job is a no-op.
    """
    from ltray.eval.stage import stage_eval

    store = run.store
    fp = eval_fingerprint(store, cfg)
    if store.is_current("eval", fp):
        log.info("eval: unchanged, skipped")
        return store.shown_path("eval") / "report.html"
    report = stage_eval(run, cfg)
    entry = dict(store.stage_info("eval") or {})
    entry["fingerprint"] = fp
    store.update_manifest(stages={"eval": entry})
    return Path(report)


def fit_from_store(cfg: Config, artifacts: str, stages: tuple[str, ...] = ("cf+index", "rank"),
                   evaluate: bool = False) -> dict[str, Any]:
    """The later stages on the committed data and embed stages, in this process (a job's worker).

    Returns the pid it ran in, the indexes' shapes, and the report path and metrics when it evaluated."""
    import os

    from ltray.embed.items import load_embeddings

    store = ArtifactStore(artifacts)
    for needed in ("data", "embed"):
        if not store.has(needed):
            raise ValueError(f"{artifacts}: the {needed} stage is not committed yet; run it first")
    bundle = load_bundle(store)
    vectors = load_embeddings(store.stage_path("embed"), bundle.item_ids)
    out: dict[str, Any] = {"pid": os.getpid()}
    run = FittedRun(store, bundle, vectors)
    if "cf+index" in stages or evaluate:
        models = run.models = stage_candidates(store, cfg, bundle, vectors)
        out["tail_index"] = {"factory": models.tail_index.factory, "ntotal": models.tail_index.ntotal}
        out["full_index"] = {"factory": models.full_index.factory, "ntotal": models.full_index.ntotal}
    if "rank" in stages or evaluate:
        run.ranker, run.blend = stage_rank(store, cfg, bundle, vectors)
        out["tail_share"] = run.blend.get("tail_share")
    store.update_manifest(timings=bundle.timings)
    if evaluate:
        if bundle.test is None:
            raise ValueError("evaluation needs the time split; drop --no-holdout")
        out["report"] = str(evaluate_if_changed(run, cfg))
        out["metrics"] = store.manifest().get("metrics", {}).get("ltray", {})
    return out


def run(cfg: Config, artifacts: str, dataset: Dataset | None = None) -> Path:
    """Split -> fit on train -> evaluate on test -> report (skipped when nothing it reads changed, as every
    stage is). Returns the report path."""
    return evaluate_if_changed(fit(cfg, artifacts, holdout=True, dataset=dataset), cfg)
