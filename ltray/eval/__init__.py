"""Offline evaluation: full-ranking metrics, the baselines ltray is measured against, the report."""

from ltray.data.segments import segment_codes, segments_from_counts
from ltray.eval.baselines import (
    BASELINES,
    EASE,
    ALSBaseline,
    ALSTailQuota,
    ALSTextBlend,
    Baseline,
    BaselineSkipped,
    ContentKNN,
    ItemKNN,
    LightFMBaseline,
    MostPop,
    RP3beta,
    TuneResult,
    holdout_sets,
    interaction_matrices,
    text_bag_features,
    top_k,
    tune,
)
from ltray.eval.metrics import (
    decile_exposure,
    evaluate,
    exposure_counts,
    gini,
    lorenz_curve,
    popularity_deciles,
    to_csr,
)
from ltray.eval.report import write_report

__all__ = [
    "BASELINES", "EASE", "ALSBaseline", "ALSTailQuota", "ALSTextBlend",
    "Baseline", "BaselineSkipped", "ContentKNN", "ItemKNN", "LightFMBaseline", "MostPop", "RP3beta", "TuneResult",
    "decile_exposure", "evaluate", "exposure_counts", "gini", "holdout_sets", "interaction_matrices",
    "lorenz_curve", "popularity_deciles", "segment_codes", "segments_from_counts", "text_bag_features", "to_csr",
    "top_k", "tune", "write_report",
]
