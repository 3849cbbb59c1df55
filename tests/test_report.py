"""The report: every section, valid PNG figures beside report.md and inline in report.html."""

from __future__ import annotations

import base64
import re
import struct
import zlib

import numpy as np
import pytest

from ltray.data.segments import segments_from_counts
from ltray.eval.metrics import decile_exposure, evaluate, lorenz_curve
from ltray.eval.report import FIGURES, SECTIONS, TABLE_COLUMNS, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(blob: bytes) -> tuple[int, int]:
    """A well-formed PNG: magic, IHDR first with a valid CRC, IEND last; returns (width, height)."""
    assert blob[:8] == PNG_MAGIC
    length, kind = struct.unpack(">I4s", blob[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", blob[29:33])[0] == zlib.crc32(blob[12:29]) & 0xFFFFFFFF
    assert blob[-12:-8] == b"\x00\x00\x00\x00" and blob[-8:-4] == b"IEND"
    return struct.unpack(">II", blob[16:24])


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    n_users, n_items = 40, 120
    pop = np.sort(rng.zipf(1.6, n_items))[::-1].astype(float)
    pop[-10:] = 0  # cold items
    seg = segments_from_counts(pop)
    test = {u: rng.choice(n_items, 3, replace=False) for u in range(n_users)}
    # "ALS": popular items; "ltray": a mix. Real metrics from the real evaluator.
    als = np.stack([rng.choice(30, 20, replace=False) for _ in range(n_users)])
    ours = np.stack([rng.choice(n_items, 20, replace=False) for _ in range(n_users)])
    table = {
        "ltray": evaluate(ours, test, seg, pop),
        "ALS": evaluate(als, test, seg, pop),
        "LightFM": {"note": "not installed"},
    }
    return dict(
        metrics_table=table,
        tradeoff_curve=[
            {"tail_share": s, "Recall@20": 0.1 - s / 10, "TailRecall@20": s / 20} for s in (0, 0.2, 0.4)
        ],
        decile_exposure={
            "ltray": decile_exposure(ours, pop).tolist(),
            "ALS": decile_exposure(als, pop).tolist(),
        },
        lorenz={"ltray": lorenz_curve(ours, n_items), "ALS": lorenz_curve(als, n_items)},
        examples=[
            {
                "user_id": "u7",
                "history": [
                    {"title": "Heat (1995)", "segment": "head"},
                    {"title": "Thief | 1981", "segment": "tail"},
                ],
                "recs": [
                    {
                        "title": "Le Cercle Rouge",
                        "segment": "tail",
                        "score": 0.91,
                        "source": "tail",
                        "reason": "shares 'heist, noir' with Heat, which you liked",
                    },
                    {
                        "title": "Ronin <1998>",
                        "segment": "head",
                        "score": 0.8,
                        "source": "cf",
                        "reason": "users like you",
                    },
                    # Cold: the ranker's score of a never-seen item is noise; one with its text similarity.
                    {"title": "Sorcerer", "segment": "cold", "score": -97.25, "source": "tail",
                     "reason": "close to Heat in text", "text_score": 0.6183},
                    {"title": "Le Samourai", "segment": "cold", "score": -135.5, "source": "tail",
                     "reason": "close to Thief in text"},
                ],
            }
        ],
        timings={"embed": 61.2, "cf": 3.4, "eval": 1.1},
        notes=["The bridge did not move TailRecall@20 on validation."],
    )


def test_report_has_every_section_and_valid_figures(tmp_path, inputs):
    md_path, html_path = write_report(tmp_path / "eval", dataset_name="movielens-latest-small", **inputs)
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"## {section}" in md
        assert f"<h2>{section}</h2>" in page
    # The metrics table: every column, every system, the note of an uninstalled baseline.
    for col in TABLE_COLUMNS:
        assert col in md and col in page
    assert re.search(r"^\| ltray \| [0-9.]+ \|", md, re.M) and "| LightFM |" in md and "not installed" in md
    assert f"{inputs['metrics_table']['ALS']['Recall@20']:.4f}" in md
    # Example user: history and list, tail items marked, table-breaking and HTML characters escaped.
    assert "### User u7" in md and "◆ tail" in md and "Thief \\| 1981" in md
    assert "Ronin &lt;1998&gt;" in page and "Ronin <1998>" not in page
    # A cold item shows its text similarity, labelled, or no score; never the ranker's meaningless one.
    assert "| 3 | Sorcerer | ◆ cold | text 0.62 | tail |" in md and "<td>text 0.62</td>" in page
    assert "| 4 | Le Samourai | ◆ cold | – | tail |" in md
    assert "-97" not in md and "-135" not in md and "-97" not in page and "-135" not in page
    assert "| 1 | Le Cercle Rouge | ◆ tail | 0.9100 |" in md  # seen items keep their score
    assert "cold item was never interacted with" in md
    assert "| total | 65.7000 |" in md
    assert "The bridge did not move" in md
    # Figures: PNG files next to report.md, referenced by name; the HTML embeds the same bytes.
    for name in FIGURES.values():
        blob = (tmp_path / "eval" / name).read_bytes()
        w, h = _assert_png(blob)
        assert w > 300 and h > 300
        assert f"]({name})" in md
        assert f"data:image/png;base64,{base64.b64encode(blob).decode()}" in page
    assert 'src="tradeoff.png"' not in page  # self-contained: no file references


def test_report_with_no_optional_inputs_still_has_every_section(tmp_path):
    md_path, html_path = write_report(
        tmp_path,
        dataset_name="synthetic",
        metrics_table={"MostPop": {"Recall@20": 0.05, "TailRecall@20": 0.0}},
    )
    md = md_path.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"## {section}" in md
    assert "No example users." in md and "No timings recorded." in md
    for name in FIGURES.values():
        _assert_png((tmp_path / name).read_bytes())


def test_the_verdict_comes_first_and_states_the_targets(tmp_path):
    from ltray.eval.verdict import sentence, verdict

    table = {"ltray": {"Recall@20": 0.13, "TailRecall@20": 0.02, "ColdRecall@20": 0.02},
             "ALS": {"Recall@20": 0.12, "TailRecall@20": 0.001, "ColdRecall@20": 0.0},
             "EASE": {"Recall@20": 0.128, "TailRecall@20": 0.0005, "ColdRecall@20": 0.0},
             "ContentKNN": {"Recall@20": 0.05, "TailRecall@20": 0.03, "ColdRecall@20": 0.004}}
    v = verdict(table)
    assert v["best_cf"] == "EASE" and v["recall"]["met"] and v["tail"]["met"] and v["cold"]["met"]
    assert v["not_dominated"]["met"]
    # A baseline above on both recall and tail recall dominates.
    worse = {**table, "ltray": {"Recall@20": 0.10, "TailRecall@20": 0.0004, "ColdRecall@20": 0.0}}
    assert verdict(worse)["not_dominated"]["by"] == ["ALS", "EASE"] and not verdict(worse)["recall"]["met"]
    text = sentence(v, table)
    assert "EASE" in text and "no baseline beats it" in text
    # Against a CF baseline with no tail hit there is no ratio to state (not 1e9x).
    zero = {**table, "EASE": {**table["EASE"], "TailRecall@20": 0.0}}
    assert verdict(zero)["tail"] == {"met": True, "ratio": None}
    assert "TailRecall@20 0.0200 against its 0;" in sentence(verdict(zero), zero)
    md_path, html_path = write_report(tmp_path, dataset_name="x", metrics_table=table, verdict=text,
                                      test_fraction=0.3, min_user_interactions=7, head_share=0.7)
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert md.index("**Verdict.**") < md.index("## ") and 'class="verdict"' in page
    assert "at least 7 interactions" in md and "floor(0.3*n" in md and "covering 70%" in md  # the split's own settings
