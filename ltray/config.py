"""One typed config for every stage.

Loaded from YAML (``--config FILE``) and overridden field by field with
``--set section.field=value``. Unknown keys and wrong types are errors, so a
typo never silently falls back to a default. Defaults run on a 2-core laptop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ltray.errors import LtrayError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Section):
    n_items: int = Field(5000, ge=10)
    n_users: int = Field(2000, ge=10)
    interactions_per_user: float = Field(30.0, gt=1)
    n_topics: int = Field(24, ge=2)
    zipf_exponent: float = Field(1.1, gt=0)
    topic_affinity: float = Field(0.85, ge=0, le=1, description="share of a user's picks driven by topic")
    seed: int = 7


class DataConfig(_Section):
    dataset: str | None = Field("synthetic", description="built-in dataset name; ignored when files are given")
    items: str | None = None
    interactions: str | None = None
    item_id_col: str = "item_id"
    text_col: str = "text"
    user_id_col: str = "user_id"
    interaction_item_id_col: str | None = Field(None, description="defaults to item_id_col")
    ts_col: str = "ts"
    weight_col: str | None = "weight"
    text_template: str | None = Field(None, description='e.g. "{title}. Genres: {genres}"')
    null_text: Literal["error", "fill"] = "error"
    text_fill: str = ""
    unknown_items: Literal["error", "drop"] = "error"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    min_user_interactions: int = Field(5, ge=2)
    head_share: float = Field(0.8, gt=0, lt=1)
    synthetic: SyntheticConfig = SyntheticConfig()


class EmbedConfig(_Section):
    model: str | None = Field(None, description="HF hub name or folder; None = packaged all-MiniLM-L6-v2")
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(128, ge=8, le=8192, description="tokens; longer texts are cut and counted")
    batch_size: int = Field(64, ge=1, description="texts per forward pass (and per Ray Data batch)")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = fp16 on GPU, bf16 on CPUs with native bf16 matmul, else fp32")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_actors: int | None = Field(None, ge=1, description="None = one per GPU, else one per CPU")
    cpus_per_actor: float | None = Field(None, gt=0, description="None = the cluster's CPUs / actors")
    blocks_per_actor: int = Field(4, ge=1, description="input blocks per actor, to keep every actor busy")
    empty_text: Literal["fill", "error"] = Field("fill", description="what to do with blank item text")
    empty_text_fill: str = Field("", description="text encoded in place of a blank one (empty_text=fill)")
    shard_rows: int = Field(100_000, ge=1, description="rows per output Parquet shard (written by a worker)")
    block_rows: int = Field(20_000, ge=1, description="most catalog rows per Ray Data block (bounds worker memory)")
    sort_batches: int = Field(16, ge=1, description="forward batches per Ray Data batch; texts are sorted by "
                              "length within it, so each forward pass pads little")


class ItemItemConfig(_Section):
    kind: Literal["rp3beta", "ease", "none"] = Field(
        "rp3beta", description="item x item model: RP3beta (sparse random walk), EASE (an n x n inverse, up to "
        "ease_max_items trained items) or none; with cf.tune on, chosen on validation among those that apply")
    alpha: float = Field(1.0, gt=0, description="RP3beta: transition probabilities are raised to this power")
    beta: float = Field(0.3, ge=0, description="RP3beta: a target item's weight is divided by its popularity**beta")
    l2: float = Field(200.0, gt=0, description="EASE: ridge penalty on the item x item regression")
    neighbours: int = Field(100, ge=1, description="weights kept per item (the largest)")
    ease_max_items: int = Field(20_000, ge=0, description="EASE (ltray's source and the baseline) is tried only up "
                                "to this many items with a training interaction: an n x n inverse (n^3 flops, 1.6 GB "
                                "a float32 copy at 20k), or Woodbury's m x m one when there are fewer users m")
    tune_grid: dict[str, dict[str, list[Any]]] = Field(
        default_factory=lambda: {"rp3beta": {"beta": [0.0, 0.3, 0.6], "alpha": [0.5, 1.0],
                                             "neighbours": [50, 200]},
                                 "ease": {"l2": [20.0, 200.0, 2000.0]}},
        description="per kind: fields and the values tried when cf.tune is on")


class CFConfig(_Section):
    factors: int = Field(64, ge=2)
    regularization: float = Field(0.05, ge=0)
    iterations: int = Field(15, ge=1)
    alpha: float = Field(2.0, ge=0, description="confidence C = 1 + alpha * w (w after weighting)")
    weighting: Literal["alpha", "bm25", "binary"] = Field(
        "alpha", description="w as given (alpha), BM25(w) (bm25) or 1 (binary), before the confidence")
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    use_cg: bool = Field(True, description="conjugate-gradient solver in training (fold-in is always exact)")
    num_threads: int = Field(0, ge=0, description="implicit's threads; 0 = all cores")
    use_gpu: Literal["auto", "never", "always"] = "auto"
    seed: int = 0
    item: ItemItemConfig = ItemItemConfig()
    mix: float | None = Field(None, ge=0, le=1, description="weight of the item-item z-score in the CF score "
                              "(1 - mix on ALS's); None = chosen on validation from mix_grid")
    mix_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    tune: bool = Field(True, description="choose ALS's and the item-item model's values on validation Recall@20 "
                       "(a time split carved from train, as for the baselines)")
    tune_grid: dict[str, list[Any]] = Field(
        default_factory=lambda: {"weighting": ["alpha", "binary", "bm25"], "alpha": [1.0, 4.0, 16.0, 40.0]},
        description="ALS fields and the values tried when tune is on: a coordinate search from the configured "
        "point (each field in turn, the others held at their best so far). By default the confidence (how "
        "the data's weights count), not the capacity: factors and regularization tuned for ALS's own top 20 "
        "left the CTR ranker's ALS features weaker (see the README, Quality on every catalog)")
    tune_rounds: int = Field(1, ge=1, description="coordinate-search passes over the ALS grid")
    tune_budget_s: float = Field(120.0, gt=0, description="wall-clock budget of the whole CF search; what is not "
                                 "tried by then keeps its best value so far")
    tune_max_users: int = Field(3000, ge=10, description="validation users scored per point (a seeded sample above)")

    @field_validator("tune_grid")
    @classmethod
    def _grid_names_cf_fields(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        tunable = set(cls.model_fields) - {"tune", "tune_grid", "tune_rounds", "tune_budget_s", "tune_max_users",
                                           "item", "mix", "mix_grid"}
        unknown = sorted(set(v) - tunable)
        if unknown:
            raise ValueError(f"cf.tune_grid names {unknown}, which are not ALS fields of cf")
        if any(not isinstance(vals, list) or not vals for vals in v.values()):
            raise ValueError("cf.tune_grid values must be non-empty lists")
        return v


class IndexConfig(_Section):
    factory: str | None = Field(None, description="FAISS index_factory string; None = picked by size")
    flat_max_items: int = Field(100_000, ge=0, description="exact Flat up to this many vectors")
    large_kind: Literal["ivf", "hnsw"] = Field("ivf", description="above flat_max_items: IVF-Flat or HNSW")
    pq_over_items: int = Field(5_000_000, ge=0, description="IVF-PQ above this many vectors")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF cells; None = about 4*sqrt(n), a power of 2")
    ivf_nprobe: int | None = Field(None, ge=1, description="cells probed per query; None = from the share below")
    ivf_probe_share: float = Field(1 / 64, gt=0, le=1, description="share of cells probed when ivf_nprobe is None")
    ivf_min_nprobe: int = Field(16, ge=1, description="floor of the share-derived nprobe")
    ivf_min_points_per_cell: int = Field(39, ge=1, description="caps nlist so k-means has enough points")
    ivf_train_iters: int = Field(10, ge=1, description="k-means iterations when training IVF cells")
    pq_m: int | None = Field(None, ge=1, description="PQ sub-quantizers (8 bits each); None = dim/4")
    pq_refine: str | None = Field("SQ8", description="IVF-PQ re-ranks its candidates on these codes "
                                  "(FAISS Refine(...); SQ8 = 1 byte per dim); None = PQ alone (recall@100 0.82 at 100k)")
    pq_refine_k_factor: float = Field(4.0, ge=1, description="Refine: candidates re-ranked per result wanted")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(40, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)
    train_sample: int = Field(200_000, ge=1000, description="vectors sampled to train IVF / PQ")
    use_gpu: Literal["auto", "never", "always"] = "auto"
    bridge_l2: float = Field(1.0, ge=0, description="ridge penalty of the text->CF bridge")
    profile_half_life_days: float = Field(180.0, gt=0)
    profile_recent_items: int = Field(50, ge=1)
    multi_interest_items: int = Field(5, ge=0, description="recent items that each query the tail index")


class RankConfig(_Section):
    negatives_per_positive: int = Field(4, ge=1)
    negative_mix: tuple[float, float, float] = Field((0.4, 0.3, 0.3), description="random, popular, hard")
    popularity_exponent: float = Field(0.75, ge=0, description="popular negatives are drawn ~ count**this")
    negative_redraws: int = Field(8, ge=0, description="redraws of a negative that hit a positive, then dropped")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="latest share of interactions that validates")
    validation_per_user: bool = Field(True, description="the cut is per user (each user's latest share "
                                      "validates); False = one global time cut")
    id_buckets: int = Field(50_000, ge=16, description="hash buckets of each of the user and item id tables")
    id_dim: int = Field(16, ge=2)
    text_dim: int = Field(32, ge=2, description="PCA dims of item text vectors and user profiles")
    scaler_sample_pairs: int = Field(20_000, ge=100, description="random pairs for dense stats when no table")
    text_clusters: tuple[int, ...] = Field(
        (16, 64, 256), description="k-means sizes over item text vectors (coarse to fine; () = none): per size, "
        "the share of the user's history in the item's cluster and the item's share of its cluster's interactions")
    cluster_smoothing: float = Field(
        1.0, gt=0, description="pseudo-interactions, spread by cluster popularity, added to each user's history "
        "before the cluster shares are taken (a user without history gets the catalog's shares)")
    hidden: tuple[int, ...] = (128, 64)
    cross_layers: int = Field(2, ge=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(1024, ge=8, description="global batch; each of N workers takes batch_size // N")
    materialize_max_mb: float = Field(
        512.0, ge=0, description="sample sets up to this size are read whole by each Train worker, which takes "
        "its share in memory; larger ones stream through Ray Data")
    shuffle_buffer: int = Field(0, ge=0, description="shuffle: local buffer rows per worker when samples stream; an "
                                "in-memory set is permuted whole each epoch when > 0; 0 = off")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0, description="on dense weights (SparseAdam tables have none)")
    sparse_embeddings: Literal["auto", "never", "always"] = Field(
        "auto", description="sparse id-table gradients: auto = on CPU (gloo), off on GPU (NCCL needs dense)")
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs reserved per Train worker; None = share what data_cpus leaves, at most 1")
    data_cpus: float = Field(1.0, ge=0, description="CPUs left free for Ray Data reads while training")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per Train worker")
    use_gpu: Literal["auto", "never", "always"] = "auto"
    early_stopping_patience: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    storage_path: str | None = Field(None, description="Ray Train storage; None = <artifacts>/_train")
    run_name: str | None = Field(None, description="Ray Train run name; None = a fresh unique name")
    fail_at_step: int | None = Field(None, ge=0, description="test hook: rank 1 raises at this step, first try")
    debias_popularity: bool = Field(False, description="score with the popularity feature fixed to its mean")
    text_tower: Literal["frozen", "top_layers", "lora"] = Field(
        "frozen", description="frozen: precomputed item text vectors only; top_layers / lora: the BERT encoder "
        "joins the CTR model and fine-tunes (its top layers, or low-rank adapters on attention query/value)")
    text_tower_model: str | None = Field(
        None, description="encoder of the text tower (HF name or folder); None = the packaged all-MiniLM-L6-v2")
    text_tower_layers: int = Field(1, ge=1, description="top_layers: how many top transformer layers train")
    lora_rank: int = Field(8, ge=1, description="lora: rank r of the adapters")
    lora_alpha: float = Field(16.0, gt=0, description="lora: adapter scale is alpha / r")
    text_tower_lr: float = Field(1e-4, gt=0, description="learning rate of the trainable encoder weights")
    text_tower_max_length: int = Field(32, ge=4, le=512, description="tokens per item text in the tower")
    refit_on_all: bool = Field(
        True, description="after the operating point is chosen (with a ranker trained on half of the validation "
        "users, on the other half), train the kept ranker on all of them")
    seed: int = 0

    @field_validator("negative_mix")
    @classmethod
    def _mix_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"rank.negative_mix {v} must be three shares >= 0 that sum to 1")
        return v

    @field_validator("text_clusters")
    @classmethod
    def _cluster_sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 2 for k in v) or len(set(v)) != len(v):
            raise ValueError(f"rank.text_clusters {v} must be distinct sizes >= 2")
        return v


class BlendConfig(_Section):
    n_cf: int = Field(200, ge=0)
    n_item: int = Field(200, ge=0, description="candidates the item-item model (cf.item) adds per user")
    n_tail: int = Field(100, ge=0)
    n_bridge: int = Field(100, ge=0)
    n_cold: int = Field(50, ge=0, description="cold (never interacted) items the tail retrieval adds, searched "
                        "among cold items alone: in the tail index they are crowded out by tail items")
    tail_share: float | None = Field(None, ge=0, le=1, description="None = chosen on validation")
    cold_share: float | None = Field(None, ge=0, le=1, description="least share of cold (new) items in the "
                                     "top-k, on top of tail_share; None = chosen on validation")
    ranker_weight: float | None = Field(
        None, ge=0, description="score = ALS z-score + w x ranker logit; None = chosen on validation")
    method: Literal["quota", "boost"] = "quota"
    quota_by: Literal["uniform", "affinity"] | None = Field(
        None, description="how the tail and cold quotas spread over users: uniform (every list gets the same "
        "share) or affinity (a user's shares scale with the share of their own history outside the head, "
        "relative to the average user: explorers get more long tail, head-only users less); None = chosen on "
        "validation")
    max_user_share: float = Field(0.5, gt=0, le=1, description="affinity: most of one list that the tail and "
                                  "cold quotas together may take")
    cold_order: Literal["content_profile_bridge", "content_bridge", "content", "profile", "score"] = Field(
        "content_profile_bridge", description="which cold items fill the cold quota: by one view of a cold item, "
        "or by several added as z-scores over the user's cold candidates. The views: content (the text search's "
        "score: the best match of the profile and each recent item), profile (the cosine to the user's profile "
        "alone: better where items differ by topic only) and bridge (the user's ALS factor against the item's "
        "factors predicted from its text). content_profile_bridge adds all three, content_bridge two; score "
        "takes the best final score (the ranker never sees a cold positive)")


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="HTTP bind address of the Serve proxy")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 = a free one (ltray serve)")
    app_name: str = "ltray"
    topology: Literal["auto", "chain", "colocated"] = Field(
        "auto", description="chain: Ingress -> CFRecall -> TailRetrieval -> CTRRanker, one deployment each "
        "(each scales on its own resources); colocated: Ingress -> one deployment running all three stages (one "
        "hop instead of three); auto: colocated on a one-node Ray cluster (a laptop: hops only cost CPU there), "
        "chain on more nodes")
    num_cpus: float = Field(0.125, gt=0, description="CPUs per replica; four deployments at two replicas of 0.125 "
                            "fit in 1 CPU")
    num_gpus_ranker: float = Field(0.0, ge=0, description="GPU profile: GPUs per CTRRanker replica")
    num_gpus_retrieval: float = Field(0.0, ge=0, description="GPU profile: GPUs per TailRetrieval replica")
    max_ongoing_requests: int = Field(64, ge=1, description="per replica, before Serve queues or rejects")
    min_replicas: int = Field(
        2, ge=0, description="replicas each deployment keeps (at most max_replicas): with two, a replica that dies "
        "leaves one answering while Serve replaces it; with one, requests waited 12-19 s for the replacement")
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0, description="autoscaler's target per replica")
    stage_retries: int = Field(1, ge=0, description="retries of a stage call whose replica died (reads only)")
    retry_wait_s: float = Field(
        3.0, gt=0, description="once a stage lost a replica, how long its calls (the retry, and new ones until "
        "the stage answers again) wait for a live replica; then 503 with Retry-After (with no replica left, "
        "Serve queues a call until a replacement is up)")
    health_check_period_s: float = Field(
        2.0, gt=0, description="Serve's check of each replica: a dead one is replaced only once a check finds it "
        "(Serve's default, 10 s, left a lone replica's deployment unanswered that much longer)")
    health_check_timeout_s: float = Field(
        10.0, gt=0, description="a replica whose check does not answer within this fails it; three failures in a "
        "row and Serve replaces it (Serve's default: 30 s)")
    max_k: int = Field(500, ge=1, le=500, description="largest k a request may ask for (schema caps at 500)")
    max_text_chars: int = Field(2000, ge=1, le=2000, description="longest /search text (schema caps at 2000)")
    max_recent_items: int = Field(500, ge=1, le=500, description="most session items in one request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    body_read_timeout_s: float = Field(5.0, gt=0, description="a request body not fully received within this "
                                       "gets 408 (a client that declares more than it sends holds no connection)")
    max_batch_size: int = Field(32, ge=1, description="requests batched together: per CTRRanker forward pass, "
                                "per TailRetrieval FAISS search, per colocated Pipeline call")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="wait to fill a batch; 0 = join the requests already waiting (they gather "
        "while a batch runs), no added latency for a lone request")
    threads: int = Field(1, ge=1, description="torch / FAISS / BLAS threads per replica (more spin on 2 cores)")
    encoder_threads: int = Field(1, ge=1, description="torch threads of the /search text encoder")
    ready_timeout_s: float = Field(2.0, gt=0, description="/readyz: wait this long for each stage")
    version_switch_wait_s: float = Field(
        60.0, gt=0, description="chain: how long a request may wait for the stages to agree on one artifacts "
        "version while a new one rolls out (then 503)")
    version_retry_interval_s: float = Field(0.05, gt=0, description="chain: pause before asking the stages again "
                                            "during a version switch")
    finish_after_switch_s: float = Field(
        30.0, gt=0, description="a replaced replica's grace beyond version_switch_wait_s: the time a request that "
        "waited out a version switch still needs to pass the stages on a loaded machine (2 s was too little)")


class EvalConfig(_Section):
    ks: tuple[int, ...] = (10, 20)
    max_recall_loss: float = Field(
        0.01, ge=0, lt=1, description="the operating point keeps validation Recall@20 within this share of "
        "the best single CF source's (the CF mix, ALS alone or item-item alone, on the validation users): the "
        "accuracy the product promises, 0.99x the best CF")
    recall_floor_z: float = Field(
        1.0, ge=0, description="an operating point must clear the recall floor by this many standard errors "
        "of its per-user Recall@20 difference to that source (paired over the validation users); 0 = the plain floor")
    long_tail_objective: Literal["sum", "balanced"] = Field(
        "balanced", description="what the operating point maximises within the recall floor: the geometric "
        "mean of TailRecall@20 and ColdRecall@20 (balanced: neither kind of long tail is given up for the "
        "other; the sum when validation holds no hit of one kind at all), or their sum (sum: on MovieLens it "
        "flipped between runs from cold slots to none, see the README)")
    tail_share_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
    cold_share_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.25)
    ranker_weight_grid: tuple[float, ...] = (0.0, 1.0, 8.0, 32.0)
    quota_by_grid: tuple[Literal["uniform", "affinity"], ...] = ("uniform", "affinity")
    baselines: tuple[Literal["mostpop", "als", "itemknn", "contentknn", "ease", "rp3beta", "als_tail_quota",
                             "als_text_blend", "lightfm"], ...] = Field(
        ("mostpop", "als", "itemknn", "contentknn", "ease", "rp3beta", "als_tail_quota", "als_text_blend",
         "lightfm"),
        description="the baselines the report runs (ALS always runs: the exposure charts compare against it; "
        "a hybrid brings in ALS and ContentKNN)")
    tune: bool = Field(True, description="grid-search every baseline on a validation split carved from train")
    tune_metric: str = Field("Recall@20", description="what baseline tuning maximises on validation")
    baseline_grids: dict[str, dict[str, list[Any]]] = Field(
        default_factory=lambda: {
            # Kept small so `ltray run` on MovieLens stays inside its time budget; the
            # benchmark benchmarks/baselines_movielens.py searches wider grids.
            "als": {"factors": [32, 64, 128], "regularization": [0.05, 0.5], "binary": [True]},
            "itemknn": {"neighbours": [50, 200]},
            "contentknn": {"half_life_days": [None, 365.0], "center": [True], "recent_items": [None, 30]},
            "lightfm": {"no_components": [32, 64], "epochs": [10, 30]},
            # log scale: the best EASE regularization depends on the data's size and density
            "ease": {"regularization": [50.0, 200.0, 500.0, 2000.0]},
            "rp3beta": {"alpha": [0.5, 1.0], "beta": [0.0, 0.3, 0.6], "neighbours": [50, 200]},
            # The hybrids tune only their own weight / share; their ALS and ContentKNN keep the
            # parameters tuned for those rows.
            "als_text_blend": {"text_weight": [0.1, 0.3, 1.0]},
            "als_tail_quota": {"tail_share": [0.1, 0.2, 0.4]},
        },
        description="hyper-parameter grid per baseline; a baseline without a grid runs with its defaults")
    tail_quota_share: float = Field(0.4, ge=0, le=1, description="share of slots ALS+TailQuota gives to "
                                    "ContentKNN's tail / cold items when it is not tuned (eval.tune false or "
                                    "no als_tail_quota grid)")
    popularity_bins: int = Field(10, ge=2, description="bins of the report's popularity exposure chart")
    example_users: int = 3


class Config(_Section):
    data: DataConfig = DataConfig()
    embed: EmbedConfig = EmbedConfig()
    cf: CFConfig = CFConfig()
    index: IndexConfig = IndexConfig()
    rank: RankConfig = RankConfig()
    blend: BlendConfig = BlendConfig()
    serve: ServeConfig = ServeConfig()
    eval: EvalConfig = EvalConfig()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def fingerprint(self, *sections: str) -> dict[str, Any]:
        """The parts of the config a stage depends on, for idempotency checks."""
        full = self.to_dict()
        return {s: full[s] for s in sections}


class ConfigError(LtrayError, ValueError):
    """A config file or override that does not fit the schema."""


def _parse_value(raw: str) -> Any:
    # YAML gives ints, floats, bools, null and lists ("[10, 20]") for free.
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
    data = apply_overrides(data, list(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msgs.append(f"{loc}: {err['msg']}")
        src = f" in {path}" if path else ""
        raise ConfigError(f"invalid config{src}: " + "; ".join(msgs)) from None


# -- what every entry point takes: the `ltray` CLI (typer) and the jobs/ scripts (argparse) ---------------
class DataOption(NamedTuple):
    """One command-line option that sets a ``data.<field>`` of the config."""

    field: str
    flag: str
    help: str


DATA_OPTIONS: tuple[DataOption, ...] = (
    DataOption("dataset", "--dataset", "built-in dataset: synthetic | movielens-latest-small | "
               "amazon-office-2014-5core | lastfm-hetrec-2k"),
    DataOption("items", "--items", "items file or folder (CSV, Parquet, JSONL)"),
    DataOption("interactions", "--interactions", "interactions file or folder"),
    DataOption("item_id_col", "--item-id-col", "item id column"),
    DataOption("text_col", "--text-col", "item text column"),
    DataOption("user_id_col", "--user-id-col", "user id column"),
    DataOption("ts_col", "--ts-col", "timestamp column"),
    DataOption("weight_col", "--weight-col", "weight column"),
    DataOption("text_template", "--text-template", 'e.g. "{title}. Genres: {genres}"'),
)
DATA_OPTION = {o.field: o for o in DATA_OPTIONS}


def build_config(config: str | Path | None, set_: list[str] | None, **data: str | None) -> Config:
    """``--config``, then the ``--set`` overrides, then the data options (``DATA_OPTIONS``; None = not given)."""
    unknown = sorted(set(data) - set(DATA_OPTION))
    if unknown:
        raise TypeError(f"build_config: no data option {', '.join(unknown)}")
    overrides = list(set_ or [])
    for o in DATA_OPTIONS:
        if data.get(o.field) is not None:
            # JSON-quoted: a value like "{title}: {genres}" or "yes" stays a string through YAML.
            overrides.append(f"data.{o.field}={json.dumps(data[o.field])}")
    return load_config(config, overrides)


def artifacts_uri(cfg: Config, artifacts: str | None) -> str:
    """The run folder or URI: ``--artifacts``, else ./artifacts/<dataset> (``custom`` for files)."""
    from ltray.artifacts import default_artifacts_dir

    return artifacts or default_artifacts_dir(cfg.data.dataset if not cfg.data.items else "custom")
