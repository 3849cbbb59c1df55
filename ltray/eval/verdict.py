"""ltray against its baselines in a few numbers: what the report's verdict and the quality matrix state.

The targets (one config for every catalog):
- Recall@20 >= RECALL_RATIO x the best tuned CF baseline (ALS, ItemKNN, EASE, RP3beta);
- not dominated: no baseline has both a higher Recall@20 and a higher TailRecall@20;
- TailRecall@20 >= TAIL_RATIO x that of the CF baseline with the best recall;
- ColdRecall@20 >= ContentKNN's, where the test split has cold items.
"""

from __future__ import annotations

from typing import Any

CF_BASELINES = ("ALS", "ItemKNN", "EASE", "RP3beta")
RECALL_RATIO, TAIL_RATIO = 0.99, 1.25
K = 20


def verdict(table: dict[str, dict[str, float]], ours: str = "ltray") -> dict[str, Any]:
    """Each target as {"met": bool | None, ...the numbers behind it}; None = does not apply."""
    r, t, c = f"Recall@{K}", f"TailRecall@{K}", f"ColdRecall@{K}"
    me = table[ours]
    cf = {n: table[n] for n in CF_BASELINES if n in table}
    best_cf = max(cf, key=lambda n: cf[n][r]) if cf else None
    others = {n: m for n, m in table.items() if n != ours}
    dominated_by = [n for n, m in others.items() if m[r] > me[r] and m[t] > me[t]]
    out: dict[str, Any] = {"best_cf": best_cf, "not_dominated": {"met": not dominated_by, "by": dominated_by}}
    if best_cf is not None:
        ref = cf[best_cf]
        out["recall"] = {"met": me[r] >= RECALL_RATIO * ref[r], "ratio": _ratio(me[r], ref[r])}
        out["tail"] = {"met": me[t] >= TAIL_RATIO * ref[t], "ratio": _ratio(me[t], ref[t])}
    has_cold = any(m.get(c, 0.0) > 0 for m in table.values())
    content = table.get("ContentKNN", {}).get(c, 0.0)
    out["cold"] = {"met": (me.get(c, 0.0) >= content) if has_cold and "ContentKNN" in table else None,
                   "ours": me.get(c, 0.0), "ContentKNN": content}
    best_recall = max(others, key=lambda n: others[n][r]) if others else None
    out["best_recall_baseline"] = best_recall
    return out


def _ratio(ours: float, ref: float) -> float | None:
    """ours / ref; None where the reference is 0 (no ratio to state)."""
    return ours / ref if ref > 0 else None


def times(ratio: float | None, ours: float, digits: int = 2) -> str:
    """A verdict's ratio as read: "1.56x its"; where the reference is 0 there is no ratio: "0.0028 against its 0"."""
    return f"{ratio:.{digits}f}x its" if ratio is not None else f"{ours:.4f} against its 0"


def sentence(v: dict[str, Any], table: dict[str, dict[str, float]], ours: str = "ltray") -> str:
    """The verdict as one plain sentence for a reader."""
    r, t = f"Recall@{K}", f"TailRecall@{K}"
    me = table[ours]
    parts = []
    if v.get("best_cf"):
        ref = table[v["best_cf"]]
        recall = v["recall"]["ratio"]
        parts.append(f"Recall@{K} {me[r]:.4f} is " + (f"{recall:.2f}x" if recall is not None else "above")
                     + f" the best tuned CF baseline ({v['best_cf']}, {ref[r]:.4f}); TailRecall@{K} "
                     + (f"{me[t]:.4f} is {times(v['tail']['ratio'], me[t], 1)} {ref[t]:.4f}"
                        if v["tail"]["ratio"] is not None else times(None, me[t])))
    parts.append("no baseline beats it on both recall and tail recall" if v["not_dominated"]["met"] else
                 f"{', '.join(v['not_dominated']['by'])} beat{'s' if len(v['not_dominated']['by']) == 1 else ''} "
                 "it on both recall and tail recall")
    cold = v["cold"]
    if cold["met"] is not None:
        parts.append(f"ColdRecall@{K} {cold['ours']:.4f} against ContentKNN's {cold['ContentKNN']:.4f}")
    return "; ".join(parts) + "."


__all__ = ["CF_BASELINES", "RECALL_RATIO", "TAIL_RATIO", "sentence", "times", "verdict"]
