"""Dataset statistics and the long-tail plot behind `ltray data inspect`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ltray.data.schema import Dataset
from ltray.data.segments import compute_segments


def dataset_stats(ds: Dataset, head_share: float = 0.8) -> dict[str, Any]:
    inter = ds.interactions
    n_users, n_items, n_inter = ds.n_users, ds.n_items, len(inter)
    seg = compute_segments(ds.items["item_id"], inter, head_share)
    counts = seg.counts()
    head_ids = seg.ids("head")
    head_inter = int(inter["item_id"].isin(head_ids).sum())
    pairs = inter[["user_id", "item_id"]].drop_duplicates().shape[0]
    return {
        "dataset": ds.name,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "sparsity": 1.0 - pairs / float(max(1, n_users * n_items)),
        "head_items": counts["head"],
        "tail_items": counts["tail"],
        "cold_items": counts["cold"],
        "head_share_of_interactions": head_inter / max(1, n_inter),
        "head_share_of_catalog": counts["head"] / max(1, n_items),
        "first_interaction": _iso(int(inter["ts"].min())),
        "last_interaction": _iso(int(inter["ts"].max())),
    }


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def plot_long_tail(ds: Dataset, path: str | Path, head_share: float = 0.8) -> Path:
    """Popularity curve (items by rank, log scale) with the head/tail cut marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = compute_segments(ds.items["item_id"], ds.interactions, head_share)
    counts = np.sort(seg.table["count"].to_numpy())[::-1]
    n_head = seg.counts()["head"]
    n_seen = int((counts > 0).sum())
    fig, ax = plt.subplots(figsize=(7, 4))
    ranks = np.arange(1, len(counts) + 1)
    ax.fill_between(ranks[:n_head], counts[:n_head], color="#d62728", alpha=0.5, label=f"head ({n_head} items)")
    ax.fill_between(ranks[n_head:n_seen], counts[n_head:n_seen], color="#1f77b4", alpha=0.5,
                    label=f"tail ({n_seen - n_head} items)")
    ax.plot(ranks[:n_seen], counts[:n_seen], color="black", lw=1)
    ax.axvline(n_head, color="gray", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("item rank by popularity")
    ax.set_ylabel("interactions")
    ax.set_title(f"{ds.name}: head covers {head_share:.0%} of interactions "
                 f"({len(counts) - n_seen} items without any)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
