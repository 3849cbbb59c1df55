"""The README's numbers are written by benchmarks/quality_matrix.py from finished runs, never by hand: a run
folder's eval/metrics.json, manifest.json and terminal output round-trip into the README's blocks, and
rewriting them is idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ltray.artifacts import ArtifactStore
from ltray.config import load_config

REPO = Path(__file__).resolve().parents[1]
ML = "movielens-latest-small"


@pytest.fixture(scope="module")
def qm(load_benchmark):
    return load_benchmark("quality_matrix")


def _row(recall: float, tail: float, cold: float, cov: float) -> dict[str, float]:
    return {"n_users": 610.0, "Recall@10": recall * 0.6, "Recall@20": recall, "NDCG@20": recall * 1.1,
            "TailRecall@20": tail, "HeadRecall@20": recall * 1.1, "ColdRecall@20": cold, "Coverage@20": cov,
            "APLT@20": tail * 10, "Gini@20": 0.9}


def _fake_run(folder: Path, seed: int, recall: float) -> Path:
    """A run folder as `ltray run` leaves it, with the files the README's numbers come from."""
    cfg = json.loads(load_config(overrides=[f"cf.seed={seed}", f"rank.seed={seed}"]).model_dump_json())
    cfg["data"]["dataset"] = ML
    store = ArtifactStore(str(folder))
    with store.writing("rank") as w:
        (w / "rank_config.json").write_text(json.dumps(cfg["rank"]))
    with store.writing("data") as w:
        pd.DataFrame({"item_id": list("abcdef"), "segment": pd.array([0, 1, 1, 1, 2, 2], "int8")}).to_parquet(
            w / "segments.parquet")
    metrics = {
        "metrics": {"ltray": _row(recall, 0.0166, 0.0284, 0.2333), "ALS": _row(0.1143, 0.0001, 0.0, 0.0991),
                    "ContentKNN": _row(0.0538, 0.0270, 0.0043, 0.1825)},
        "curve": [{"tail_share": t, "Recall@20": recall - t / 10, "TailRecall@20": 0.0127 + t / 10}
                  for t in (0.0, 0.05, 0.1)],
        "blend": {"ranker_weight": 8.0, "tail_share": 0.05, "cold_share": 0.1, "quota_by": "affinity", "curve": []},
        "baselines": {"ALS": {"params": {"factors": 32}}, "ContentKNN": {"params": {}}},
    }
    with store.writing("eval") as w:
        (w / "metrics.json").write_text(json.dumps(metrics))
    store.update_manifest(config=cfg, dataset=ML, timings={"eval": 84.2, "data": 0.2, "embed": 203.0})
    log = folder.with_name(folder.name + ".log")
    log.write_text(f"> ray: started a private local cluster (2 CPUs); its logs: {folder}/logs/ray.log\n"
                   "2026-12-07 04:00:00 INFO noise\n> eval: baseline ALS {'factors': 32} (9.9s)\n"
                   f"> eval: Recall@20 {recall:.4f}, TailRecall@20 0.0166\nreport: {folder}/eval/report.html\n"
                   "rc=0 wall=671s\n")
    return log


def test_a_finished_run_round_trips_into_the_readme_blocks(qm, tmp_path):
    runs = {}
    for seed, recall in ((0, 0.1387), (1, 0.1312)):
        folder = tmp_path / f"ml{seed}"
        log = _fake_run(folder, seed, recall)
        sets = [f"cf.seed={seed}", f"rank.seed={seed}"] if seed else []
        runs[seed] = qm.record(folder, log.read_text(), qm.wall_seconds(log.read_text()), "2 cores, no GPU", sets)
    name, r0 = runs[0]
    assert name == ML and r0["seeds"] == {"cf.seed": 0, "rank.seed": 0} and r0["overrides"] == []
    assert r0["seconds"] == 671 and r0["segments"] == {"head": 1, "tail": 3, "cold": 2} and r0["test_users"] == 610
    # The run's own lines only, its folder shown as `make run` names it.
    assert r0["log"][0] == ("> ray: started a private local cluster (2 CPUs); its logs: "
                            f"artifacts/{ML}/logs/ray.log")
    assert not any("INFO" in ln or "wall=" in ln for ln in r0["log"])
    assert runs[1][1]["overrides"] == ["cf.seed=1", "rank.seed=1"]
    assert runs[1][1]["seeds"] == {"cf.seed": 1, "rank.seed": 1}
    # A run recorded under seeds its ranker was not trained with is refused.
    with pytest.raises(SystemExit, match="rank.seed=1, not 0"):
        qm.record(tmp_path / "ml1", "", None, "2 cores, no GPU", [])

    results = qm.merge_saved(tmp_path / "none.json", {ML: r0, "synthetic": r0},
                             {ML: {"1": {k: runs[1][1][k] for k in ("metrics", "detail", "blend", "seconds",
                                                                    "date", "machine", "seeds")}}})
    blocks = qm.render(json.loads(json.dumps(results)))  # through JSON, as the saved file is
    assert set(blocks) == set(qm.BLOCKS)
    ml = blocks["movielens-results"]
    assert "| **ltray** (w=8, tail_share 0.05, cold_share 0.10, quotas by affinity) | **0.0832** | **0.1387** |" in ml
    assert "head 1 items, tail 3, cold 2" in ml and "671 s wall" in ml and "2 cores, no GPU" in ml
    assert "| 0 (default) | w=8, tail 0.05, cold 0.10, quotas by affinity | 0.1387 | 0.0166 | 0.0284 | 0.2333 | yes |" in ml
    assert "| 1 | " in ml and "0.1312" in ml
    assert "| 0.05 (chosen) |" in ml and "data 0 s, embed 203 s, eval 84 s" in ml
    sample = blocks["make-run-sample"]
    assert "# > eval: Recall@20 0.1387, TailRecall@20 0.0166" in sample and "baseline ALS" not in sample
    assert f"# report: artifacts/{ML}/eval/report.html" in sample and "the 1 lines of the baselines" in sample

    readme = tmp_path / "README.md"
    markers = "".join(f"<!-- {b}:start -->\nOLD-{b}\n<!-- {b}:end -->\n\ntext between\n\n" for b in qm.BLOCKS)
    readme.write_text("# title\n\n" + markers + "tail\n")
    qm.write_readme(blocks, readme)
    once = readme.read_text()
    qm.write_readme(blocks, readme)
    assert readme.read_text() == once  # idempotent
    assert once.startswith("# title\n\n") and once.endswith("tail\n") and "OLD-" not in once
    assert once.count("text between") == len(qm.BLOCKS)
    for b, text in blocks.items():
        assert f"<!-- {b}:start -->\n{text}\n<!-- {b}:end -->" in once


def test_a_readme_without_the_markers_is_refused(qm, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="movielens-results"):
        qm.write_readme({"movielens-results": "x"}, readme)
    assert readme.read_text() == "no markers\n"


def test_the_readme_holds_every_generated_block(qm):
    body = (REPO / "README.md").read_text()
    for b in qm.BLOCKS:
        assert body.count(f"<!-- {b}:start -->") == 1 and body.count(f"<!-- {b}:end -->") == 1, b


def test_wall_seconds_reads_both_log_formats(qm):
    assert qm.wall_seconds("x\nrc=0 wall=111s try=1\n") == 111
    assert qm.wall_seconds("\tElapsed (wall clock) time (h:mm:ss or m:ss): 11:13.91\n") == pytest.approx(673.91)
    assert qm.wall_seconds("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n") == 3723
    assert qm.wall_seconds("nothing") is None
