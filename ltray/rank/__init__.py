"""CTR ranking: features (one FeatureBuilder), the DCN-v2 model, sampling, Ray Train loop, Ranker.

``train_ctr`` lives in ``ltray.rank.train`` (it imports ray); import it from there.
"""

from __future__ import annotations

from ltray.rank.features import (
    SOURCE_FLAGS,
    FeatureBuilder,
    FeatureContext,
    FeatureSpecError,
)
from ltray.rank.model import CTRModel
from ltray.rank.ranker import Ranker
from ltray.rank.sampling import attach_flags, sample_training_table, time_validation_split

__all__ = [
    "SOURCE_FLAGS", "CTRModel", "FeatureBuilder", "FeatureContext", "FeatureSpecError", "Ranker",
    "attach_flags", "sample_training_table", "time_validation_split",
]
