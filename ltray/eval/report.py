"""The long-tail report: report.md (PNG files beside it) and a self-contained report.html.

Sections: protocol, metrics table, accuracy / tail trade-off, exposure by popularity decile,
Lorenz curve of exposure, example users, stage timings, notes. Figures are drawn with
matplotlib's Agg canvas directly (no pyplot), so no global backend is switched.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

OURS = "ltray"
TABLE_COLUMNS = (
    "Recall@10",
    "Recall@20",
    "NDCG@10",
    "NDCG@20",
    "HitRate@20",
    "TailRecall@20",
    "HeadRecall@20",
    "ColdRecall@20",
    "Coverage@20",
    "APLT@20",
    "Gini@20",
    "AvgPop@20",
)
SECTIONS = (
    "Protocol",
    "Metrics",
    "Trade-off: Recall@20 vs TailRecall@20",
    "Exposure by popularity decile",
    "Lorenz curve of exposure",
    "Example users",
    "Stage timings",
    "Notes",
)
FIGURES = {"tradeoff": "tradeoff.png", "deciles": "exposure_deciles.png", "lorenz": "lorenz.png"}
PROTOCOL = (
    "Per-user temporal holdout: for each user with at least {min_n} interactions, the last "
    "max(1, floor({f:g}*n + 0.5)) interactions by time are test. Full ranking over the whole catalog, each "
    "user's training items excluded; no sampled negatives. Head = the most popular items covering "
    "{head:.0%} of training interactions, tail = the other items seen in training, cold = items never seen "
    "in training. Segment recalls average over the users who have test items of that segment. APLT = share "
    "of tail + cold items in the lists; Coverage = distinct recommended items / catalog; Gini over the "
    "recommendation counts of every catalog item; AvgPop = mean training count of the recommended items. "
    "Every system's hyper-parameters were chosen on a validation split carved the same way from train."
)
_DPI = 110
_LONG_TAIL = ("tail", "cold")
_COLD = "cold"
EXAMPLES_LEGEND = (
    "Long-tail items (tail or cold) are marked ◆. Scores compare only within one user's list. A cold item "
    "was never interacted with, so its ranker score means nothing: it shows its text similarity to the "
    "user's interests (\"text 0.62\") where known, else –."
)


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"
    return str(v)


def _md_cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- figures


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_tradeoff(path: Path, metrics_table, tradeoff_curve, ours: str) -> None:
    fig, ax = _figure()
    if tradeoff_curve:
        pts = sorted(tradeoff_curve, key=lambda p: p["tail_share"])
        xs = [p["Recall@20"] for p in pts]
        ys = [p["TailRecall@20"] for p in pts]
        ax.plot(xs, ys, "-o", color="tab:red", label=f"{ours} (tail_share varies)", zorder=3)
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(f"{p['tail_share']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    markers = "sDv^<>phX*"
    j = 0
    for name, m in metrics_table.items():
        if "Recall@20" not in m or "TailRecall@20" not in m:
            continue
        if name == ours:
            ax.scatter(
                [m["Recall@20"]],
                [m["TailRecall@20"]],
                marker="*",
                s=220,
                color="tab:red",
                edgecolor="black",
                zorder=4,
                label=f"{ours} (default point)",
            )
            continue
        ax.scatter(
            [m["Recall@20"]],
            [m["TailRecall@20"]],
            marker=markers[j % len(markers)],
            s=60,
            zorder=3,
            label=name,
        )
        j += 1
    ax.set_xlabel("Recall@20")
    ax.set_ylabel("TailRecall@20")
    ax.set_title("Accuracy vs long-tail recall")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def _plot_deciles(path: Path, decile_exposure: Mapping[str, Sequence[float]]) -> None:
    fig, ax = _figure()
    names = list(decile_exposure)
    n_bins = max((len(v) for v in decile_exposure.values()), default=10)
    width = 0.8 / max(len(names), 1)
    x = np.arange(n_bins)
    for j, name in enumerate(names):
        shares = np.asarray(decile_exposure[name], dtype=float)
        ax.bar(x[: len(shares)] + (j - (len(names) - 1) / 2) * width, shares, width, label=name)
    ax.axhline(1.0 / n_bins, color="gray", ls="--", lw=1, label="equal exposure")
    ax.set_xticks(x, [str(i + 1) for i in x])
    ax.set_xlabel("item popularity decile (1 = most popular 10% of the catalog)")
    ax.set_ylabel("share of recommendations")
    ax.set_title("Exposure by popularity decile")
    ax.legend(fontsize=8)
    _save(fig, path)


def _plot_lorenz(path: Path, lorenz: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> None:
    fig, ax = _figure(5.2, 4.6)
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="equal exposure")
    for name, (x, y) in lorenz.items():
        x, y = np.asarray(x, float), np.asarray(y, float)
        g = 1 - 2 * float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x))) if len(x) > 1 else float("nan")
        ax.plot(x, y, label=f"{name} (Gini {g:.3f})")
    ax.set_xlabel("share of catalog items (least exposed first)")
    ax.set_ylabel("share of recommendations")
    ax.set_title("Lorenz curve of exposure")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


# ----------------------------------------------------------------------------- tables


def _metrics_rows(metrics_table: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    has_note = any("note" in m for m in metrics_table.values())
    header = ["system", *TABLE_COLUMNS] + (["note"] if has_note else [])
    rows = []
    for name, m in metrics_table.items():
        row: list[Any] = [name] + [m.get(c, float("nan")) for c in TABLE_COLUMNS]
        if has_note:
            row.append(m.get("note", ""))
        rows.append(row)
    return header, rows


def _seg_mark(seg: str) -> str:
    return f"◆ {seg}" if seg in _LONG_TAIL else seg


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows]
    return out


def _html_table(header: list[str], rows: list[list[Any]], bold_first: str | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cls = ' class="ours"' if bold_first is not None and r and r[0] == bold_first else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _rec_score(r: Mapping[str, Any]) -> Any:
    """The score cell: the ranker's score, or for a cold item its text similarity, labelled, or none."""
    if str(r.get("segment", "")) != _COLD:
        return r.get("score", float("nan"))
    text = r.get("text_score")
    return f"text {float(text):.2f}" if text is not None and np.isfinite(text) else "–"


def _example_rows(ex: Mapping[str, Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    hist = [
        [j + 1, h.get("title", ""), _seg_mark(str(h.get("segment", "")))]
        for j, h in enumerate(ex.get("history", []))
    ]
    recs = [
        [
            j + 1,
            r.get("title", ""),
            _seg_mark(str(r.get("segment", ""))),
            _rec_score(r),
            r.get("source", ""),
            r.get("reason", ""),
        ]
        for j, r in enumerate(ex.get("recs", []))
    ]
    return hist, recs


# ----------------------------------------------------------------------------- the report


def write_report(
    out_dir: str | Path,
    *,
    dataset_name: str,
    metrics_table: Mapping[str, Mapping[str, Any]],
    tradeoff_curve: Sequence[Mapping[str, float]] = (),
    decile_exposure: Mapping[str, Sequence[float]] | None = None,
    lorenz: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    examples: Sequence[Mapping[str, Any]] = (),
    timings: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    ours: str = OURS,
    test_fraction: float = 0.2,
    min_user_interactions: int = 5,
    head_share: float = 0.8,
    verdict: str = "",
) -> tuple[Path, Path]:
    """Write report.md, report.html and the PNG figures into out_dir; returns (md_path, html_path).

    metrics_table: {system: metrics dict from `evaluate`}; a row may carry "note" (e.g. "not installed").
    tradeoff_curve: ours, one {tail_share, Recall@20, TailRecall@20} per operating point.
    decile_exposure: {system: shares per popularity decile}; lorenz: {system: (x, y)}.
    examples: {user_id, history: [{title, segment}], recs: [{title, segment, score, source, reason}]}; a cold
        rec's score is not shown (meaningless for a never-seen item): its optional text_score is, labelled.
    test_fraction, min_user_interactions, head_share: the split's settings, for the Protocol section.
    verdict: ltray against the baselines and the operating point, in a few sentences, shown first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    decile_exposure = dict(decile_exposure or {})
    lorenz = dict(lorenz or {})
    timings = dict(timings or {})
    figs = {k: out / v for k, v in FIGURES.items()}
    _plot_tradeoff(figs["tradeoff"], metrics_table, list(tradeoff_curve), ours)
    _plot_deciles(figs["deciles"], decile_exposure)
    _plot_lorenz(figs["lorenz"], lorenz)

    header, rows = _metrics_rows(metrics_table)
    curve_rows = [
        [p["tail_share"], p["Recall@20"], p["TailRecall@20"]]
        for p in sorted(tradeoff_curve, key=lambda p: p["tail_share"])
    ]
    timing_rows = [[k, float(v)] for k, v in timings.items()] + (
        [["total", float(sum(timings.values()))]] if timings else []
    )
    title = f"ltray long-tail report: {dataset_name}"
    protocol = PROTOCOL.format(min_n=min_user_interactions, f=test_fraction, head=head_share)

    # One list of blocks, rendered twice: report.md and a self-contained report.html.
    doc: list[_Block] = [_Block("h1", title)] + ([_Block("verdict", verdict)] if verdict else [])
    doc += [_Block("h2", SECTIONS[0]), _Block("p", protocol), _Block("h2", SECTIONS[1]),
            _Block("table", (header, rows), ours) if rows else _Block("p", "No systems were evaluated."),
            _Block("h2", SECTIONS[2]), _Block("img", ("tradeoff", "trade-off"))]
    if curve_rows:
        doc.append(_Block("table", (["tail_share", "Recall@20", "TailRecall@20"], curve_rows)))
    doc += [_Block("h2", SECTIONS[3]), _Block("img", ("deciles", "exposure by popularity decile"))]
    if decile_exposure:
        n = max(len(v) for v in decile_exposure.values())
        doc.append(_Block("table", (["system"] + [f"D{i + 1}" for i in range(n)],
                                    [[k, *map(float, v)] for k, v in decile_exposure.items()])))
    doc += [_Block("h2", SECTIONS[4]), _Block("img", ("lorenz", "Lorenz curve")), _Block("h2", SECTIONS[5]),
            _Block("p", EXAMPLES_LEGEND if examples else "No example users.")]
    for ex in examples:
        hist, recs = _example_rows(ex)
        doc += [_Block("h3", f"User {ex.get('user_id', '?')}"), _Block("p", "History (most recent last):"),
                _Block("table", (["#", "title", "segment"], hist)) if hist else _Block("p", "(none)"),
                _Block("p", "Our list:"),
                _Block("table", (["rank", "title", "segment", "score", "source", "reason"], recs)) if recs
                else _Block("p", "(empty)")]
    doc += [_Block("h2", SECTIONS[6]),
            _Block("table", (["stage", "seconds"], timing_rows)) if timing_rows else _Block("p", "No timings recorded."),
            _Block("h2", SECTIONS[7]), _Block("ul", list(notes)) if notes else _Block("p", "None.")]

    md_path = out / "report.md"
    md_path.write_text("\n".join(line for b in doc for line in _markdown(b, FIGURES)) + "\n", encoding="utf-8")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(_html(b, figs) for b in doc) + "\n</body></html>\n"
    )
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


class _Block(NamedTuple):
    """One piece of the report: h1 / h2 / h3 / p / verdict (text), table ((header, rows); `bold`: the row
    whose first cell is this), img ((figure key, alt text)), ul (items)."""

    kind: str
    body: Any
    bold: str | None = None


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    # Tables scroll sideways instead of overflowing a narrow window (the metrics table is wide).
    "table{border-collapse:collapse;margin:0.5em 0 1em;font-size:0.85em;display:block;overflow-x:auto;"
    "max-width:100%}"
    ".verdict{background:#f3f7ff;border-left:4px solid #36c;padding:0.5em 1em}"
    "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}tr.ours{font-weight:bold;background:#fff3f0}"
    "img{max-width:100%;display:block;margin:0.5em 0}"
)


def _markdown(b: _Block, files: Mapping[str, str]) -> list[str]:
    if b.kind in ("h1", "h2", "h3"):
        return ["#" * int(b.kind[1]) + " " + b.body, ""]
    if b.kind == "verdict":
        return [f"**Verdict.** {b.body}", ""]
    if b.kind == "table":
        return [*_md_table(*b.body), ""]
    if b.kind == "img":
        return [f"![{b.body[1]}]({files[b.body[0]]})", ""]
    if b.kind == "ul":
        return [*(f"- {item}" for item in b.body), ""]
    return [b.body, ""]


def _html(b: _Block, figs: Mapping[str, Path]) -> str:
    if b.kind in ("h1", "h2", "h3"):
        return f"<{b.kind}>{html.escape(b.body)}</{b.kind}>"
    if b.kind == "verdict":
        return f'<p class="verdict"><strong>Verdict.</strong> {html.escape(b.body)}</p>'
    if b.kind == "table":
        return _html_table(*b.body, b.bold)
    if b.kind == "img":  # inline, so the page is one self-contained file
        data = base64.b64encode(figs[b.body[0]].read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(b.body[1])}" src="data:image/png;base64,{data}">'
    if b.kind == "ul":
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in b.body) + "</ul>"
    return f"<p>{html.escape(b.body)}</p>"
