"""Data layer: canonical tables, readers, built-in datasets, splits and segments."""

from __future__ import annotations

from ltray.config import DataConfig
from ltray.data.schema import DataError, Dataset, strip_source_columns
from ltray.data.segments import COLD, HEAD, TAIL, Segment, Segments, compute_segments
from ltray.data.split import global_time_cut, temporal_holdout

BUILTIN = ("synthetic", "movielens-latest-small", "amazon-office-2014-5core", "lastfm-hetrec-2k")

__all__ = [
    "BUILTIN", "COLD", "HEAD", "TAIL", "DataError", "Dataset", "Segment", "Segments", "compute_segments",
    "global_time_cut", "load_dataset", "temporal_holdout",
]


def load_dataset(cfg: DataConfig) -> Dataset:
    """Files when given (items + interactions), else the built-in dataset named in cfg.dataset."""
    from ltray.artifacts import file_sha256
    from ltray.data.readers import _files, read_interactions, read_items

    if cfg.items or cfg.interactions:
        if not (cfg.items and cfg.interactions):
            given, missing = ("items", "interactions") if cfg.items else ("interactions", "items")
            raise DataError(f"--{given} was given without --{missing}; give both files",
                            file=cfg.items or cfg.interactions, hint=f"add --{missing} FILE")
        items = read_items(cfg.items, cfg)
        inter, stats = read_interactions(cfg.interactions, cfg, items["item_id"])
        sources = {str(f): file_sha256(f) for p in (cfg.items, cfg.interactions) for f in _files(p)}
        # A built-in name left in the config (the default is "synthetic") must not label a user's files.
        name = cfg.dataset if cfg.dataset and cfg.dataset not in BUILTIN else "custom"
        ds = Dataset(name=name, items=strip_source_columns(items),
                     interactions=strip_source_columns(inter)[["user_id", "item_id", "ts", "weight"]],
                     sources={"files": sources, **stats})
        return ds
    if cfg.dataset == "synthetic":
        from ltray.data.synthetic import generate
        return generate(cfg.synthetic)
    if cfg.dataset == "movielens-latest-small":
        from ltray.data import movielens
        return movielens.load()
    if cfg.dataset == "amazon-office-2014-5core":
        from ltray.data import amazon
        return amazon.load()
    if cfg.dataset == "lastfm-hetrec-2k":
        from ltray.data import lastfm
        return lastfm.load()
    raise DataError(f"unknown dataset '{cfg.dataset}' (built-in: {', '.join(BUILTIN)})",
                    hint="or give --items FILE --interactions FILE")
