"""A new user's first hour: data too small to fit, a mistyped run folder and all-zero weights each get one
line, in seconds, before Ray starts, and leave nothing behind; the README's example data passes the checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltray.artifacts import ArtifactError, ArtifactStore
from ltray.cli import build_config
from ltray.config import load_config
from ltray.data import DataError, Dataset, load_dataset
from ltray.data.checks import check_fit_sizes, items_needed, load_checked, size_report
from ltray.validation import ranker_halves

REPO = Path(__file__).resolve().parents[1]
LTRAY = REPO / ".venv" / "bin" / "ltray"
SHOP = REPO / "examples" / "shop"
SHOP_OPTIONS = dict(item_id_col="sku", user_id_col="customer", ts_col="when", weight_col="qty",
                    text_template="{title}. Genres: {genres}. {description}")


def _dataset(per_user: dict[str, int], n_items: int = 40, same_time: bool = False) -> Dataset:
    """Users with the given numbers of distinct items, bought one a day (or all at one time)."""
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)], "text": "x"})
    rows = [(u, f"i{j}", 100 if same_time else 100 + 86_400 * j, 1.0)
            for u, n in per_user.items() for j in range(n)]
    return Dataset("custom", items, pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "weight"]))


def _ltray(*args: str, cwd: Path, imports: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI as a user runs it; `imports`: stderr also lists every module imported (-X importtime)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if imports:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    t0 = time.perf_counter()
    r = subprocess.run([str(LTRAY), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    return r, time.perf_counter() - t0


def _imported(r: subprocess.CompletedProcess) -> set[str]:
    return {ln.rsplit("|", 1)[1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}


def _fastest(*args: str, cwd: Path, tries: int = 2) -> float:
    """Seconds of the fastest of a few runs: on a loaded 2-core machine one run can wait seconds for a CPU."""
    best = float("inf")
    for _ in range(tries):
        best = min(best, _ltray(*args, cwd=cwd)[1])
        if best < 5.0:
            break
    return best


# -- minimum sizes (pure) --------------------------------------------------------------------------
def test_the_minimums_follow_the_splits_and_the_config():
    cfg = load_config()
    # run: 1 of 6 items to test leaves 5 (>= data.min_user_interactions), 1 of those validates;
    # two validation items need 10 (2 to test, then 2 of the 8 left).
    assert (items_needed(1, cfg, holdout=True), items_needed(2, cfg, holdout=True)) == (6, 10)
    assert (items_needed(1, cfg, holdout=False), items_needed(2, cfg, holdout=False)) == (5, 8)
    small = load_config(overrides=["data.min_user_interactions=3"])
    assert (items_needed(1, small, holdout=True), items_needed(2, small, holdout=True)) == (4, 10)


def test_one_item_and_one_interaction_is_refused_with_the_minimums():
    ds = _dataset({"c1": 1}, n_items=1)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        check_fit_sizes(ds, load_config(), holdout=True, source="interactions.csv")
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert msg.startswith("interactions.csv: too little data to fit")
    assert "at least 2 users with >= 6 distinct items" in msg and ">= 10" in msg
    assert "found 1 user, 1 item, 1 interaction" in msg
    assert "\n" not in msg and e.value.hint


def test_a_single_user_is_refused_however_many_items():
    with pytest.raises(DataError, match="found 1 user, 40 items, 30 interactions: 1 user with >= 5"):
        check_fit_sizes(_dataset({"c1": 30}), load_config(), holdout=False)


@pytest.mark.parametrize(("holdout", "enough"), [(True, 10), (False, 8)])
def test_the_boundary_is_exact(holdout, enough):
    cfg = load_config()
    assert check_fit_sizes(_dataset({"a": enough, "b": enough}), cfg, holdout).ok
    with pytest.raises(DataError):  # one fewer: a single validation item each, nothing to split
        check_fit_sizes(_dataset({"a": enough - 1, "b": enough - 1}), cfg, holdout)


def test_validation_items_at_one_time_cannot_be_split():
    with pytest.raises(DataError, match="0 with >= 10 whose last ones are at different times"):
        check_fit_sizes(_dataset({"a": 12, "b": 12}, same_time=True), load_config(), holdout=True)


def test_a_user_who_saw_the_whole_catalog_has_no_negatives():
    # `ltray fit`: every catalog item is in their history, so no negative can be drawn for them.
    report = size_report(_dataset({"a": 10, "b": 10}, n_items=10).interactions, 10, load_config(), False)
    assert report.validation_users == 2 and report.splittable_users == 0 and not report.ok
    # `ltray run`: their test items are unseen by the ranker's data, so they can be negatives.
    assert size_report(_dataset({"a": 10, "b": 10}, n_items=10).interactions, 10, load_config(), True).ok


def test_the_splittable_users_must_be_in_the_rankers_half():
    cfg = load_config()
    users = [f"u{i}" for i in range(6)]
    half = set(ranker_halves(pd.Series(users).to_numpy(), np.random.default_rng(cfg.rank.seed))[0])
    assert len(half) == 3
    # Only users outside the ranker's half have two validation items: its own split would be empty.
    ds = _dataset({u: (6 if u in half else 12) for u in users})
    with pytest.raises(DataError, match="rank.seed=0") as e:
        check_fit_sizes(ds, cfg, holdout=True)
    assert "rank.seed" in e.value.hint
    assert check_fit_sizes(_dataset({u: (12 if u in half else 6) for u in users}), cfg, holdout=True).ok


def test_the_default_synthetic_data_passes():
    cfg = load_config(overrides=["data.synthetic.n_items=600", "data.synthetic.n_users=300"])
    report = check_fit_sizes(load_dataset(cfg.data), cfg, holdout=True)
    assert report.ok and report.ranker_half_splittable > 100


# -- the README's example ------------------------------------------------------------------------------
def test_the_example_files_pass_every_check():
    cfg = build_config(None, None, items=str(SHOP / "items.csv"), interactions=str(SHOP / "interactions.csv"),
                       **SHOP_OPTIONS)
    for holdout in (True, False):
        ds = load_checked(cfg, holdout)
        report = size_report(ds.interactions, ds.n_items, cfg, holdout)
        assert report.ok and report.ranker_half_splittable >= 5, report
    assert ds.n_items >= 24 and ds.n_users >= 24
    assert ds.items["title"].is_unique
    cold = set(ds.items["item_id"]) - set(ds.interactions["item_id"])
    assert cold  # the example shows the cold items too


def test_the_readme_runs_the_shipped_example():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cmd = re.search(r"ltray run --items (\S+) --interactions (\S+)", readme)
    assert cmd and cmd.groups() == ("examples/shop/items.csv", "examples/shop/interactions.csv")
    for flag in ("--item-id-col sku", "--user-id-col customer", "--ts-col when", "--weight-col qty"):
        assert flag in readme


# -- all-zero weights ---------------------------------------------------------------------------------------
def _write_shop(tmp_path: Path, weights: list[float]) -> Path:
    (tmp_path / "items.csv").write_text("item_id,text\na,alpha\nb,beta\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id,ts,weight\n" + "".join(
        f"u{i},{'ab'[i % 2]},{100 + i},{w}\n" for i, w in enumerate(weights)))
    return tmp_path


def test_all_zero_weights_are_refused_naming_file_and_column(tmp_path):
    _write_shop(tmp_path, [0, 0.0, 0])
    cfg = load_config(overrides=[f"data.items={tmp_path / 'items.csv'}",
                                 f"data.interactions={tmp_path / 'inter.csv'}"])
    with pytest.raises(DataError, match="every weight is 0") as e:
        load_dataset(cfg.data)
    assert e.value.file == str(tmp_path / "inter.csv") and e.value.column == "weight"
    assert str(e.value).startswith(f"{tmp_path / 'inter.csv'}, column 'weight': ")


def test_a_few_zero_weights_stay_allowed(tmp_path):
    _write_shop(tmp_path, [0, 1, 2])
    cfg = load_config(overrides=[f"data.items={tmp_path / 'items.csv'}",
                                 f"data.interactions={tmp_path / 'inter.csv'}"])
    assert load_dataset(cfg.data).interactions["weight"].tolist() == [0.0, 1.0, 2.0]


# -- the read-only store ------------------------------------------------------------------------------------
def test_a_reader_never_creates_a_store(tmp_path):
    missing = tmp_path / "typo" / "run"
    with pytest.raises(ArtifactError, match=f"no run folder at {missing}: it does not exist") as e:
        ArtifactStore(missing, mode="r")
    assert e.value.hint and not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="is not an ltray run: it holds no manifest.json"):
        ArtifactStore(tmp_path / "empty", mode="r")
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_writer_creates_its_folder_with_its_first_write(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # opening writes nothing
    with pytest.raises(ValueError), store.writing("data"):
        raise ValueError("bad input")
    assert not (tmp_path / "run").exists()  # a failed first write leaves no empty run folder
    with store.writing("data") as w:
        (w / "x.txt").write_text("x")
    assert store.has("data")


def _killed_between_renames(root: Path) -> str:
    """A store whose writer died after moving the committed embed aside, before renaming the new one in."""
    store = ArtifactStore(root)
    with store.writing("embed", fingerprint="fp") as w:
        (w / "payload.txt").write_text("good")
    (root / "embed").rename(root / ".old-embed-1a2b3c4d")
    tmp = root / ".tmp-embed-9f8e7d6c"
    tmp.mkdir()
    (tmp / ".version").write_text("never-recorded")
    (tmp / ".owner").write_text("otherhost:1")
    return store.stage_info("embed")["version"]


def test_a_reader_does_not_recover_and_reads_the_committed_version(tmp_path):
    root = tmp_path / "run"
    version = _killed_between_renames(root)
    entries = sorted(p.name for p in root.iterdir())
    reader = ArtifactStore(root, mode="r")
    assert sorted(p.name for p in root.iterdir()) == entries  # nothing moved, nothing deleted
    assert reader.has("embed") and reader.stage_info("embed")["version"] == version
    assert (reader.stage_path("embed") / "payload.txt").read_text() == "good"  # the version the manifest names
    with pytest.raises(ArtifactError, match="read-only"), reader.writing("embed"):
        pass
    with pytest.raises(ArtifactError, match="read-only"):
        reader.update_manifest(note="x")
    assert sorted(p.name for p in root.iterdir()) == entries
    ArtifactStore(root)  # a writer does recover
    assert (root / "embed" / "payload.txt").read_text() == "good"


def test_require_names_the_missing_stages(tmp_path):
    store = ArtifactStore(tmp_path / "run")
    with store.writing("data") as w:
        (w / "x.txt").write_text("x")
    with pytest.raises(ArtifactError, match="stages embed, cf missing \\(committed: data\\)"):
        ArtifactStore(tmp_path / "run", mode="r").require("data", "embed", "cf")


# -- the CLI, as a user runs it ------------------------------------------------------------------------------
def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Ray instance" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    # Ray, torch and Serve are never even imported: the answer comes before any of them.
    assert not {m for m in _imported(r) if m.split(".")[0] in ("ray", "torch", "deployments")}
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize("command", ["recommend", "serve"])
def test_a_missing_run_folder_is_one_line_in_seconds_and_creates_nothing(tmp_path, command):
    (tmp_path / "u.txt").write_text("c1\n")
    extra = ["--users", "u.txt"] if command == "recommend" else ["--port", "0"]
    args = (command, "--artifacts", str(tmp_path / "typo"), *extra)
    line = _one_error_line(_ltray(*args, cwd=tmp_path, imports=True)[0])
    assert str(tmp_path / "typo") in line and "does not exist" in line
    seconds = _fastest(*args, cwd=tmp_path)
    assert not (tmp_path / "typo").exists()
    assert seconds < 5.0, f"{command} took {seconds:.1f}s"


def test_too_little_data_fails_before_ray_and_leaves_no_run_folder(tmp_path):
    (tmp_path / "items.csv").write_text("sku,title,genres,description\nA12,Kestrel trail boots,hiking,alpine\n")
    (tmp_path / "interactions.csv").write_text("customer,sku,when,qty\nc1,A12,2024-05-01T10:00:00Z,1\n")
    args = ("run", "--items", "items.csv", "--interactions", "interactions.csv", "--item-id-col", "sku",
            "--user-id-col", "customer", "--ts-col", "when", "--weight-col", "qty",
            "--text-template", "{title}. Genres: {genres}. {description}", "--artifacts", "runs/shop")
    line = _one_error_line(_ltray(*args, cwd=tmp_path, imports=True)[0])
    assert "interactions.csv: too little data to fit" in line and "found 1 user, 1 item" in line
    seconds = _fastest(*args, cwd=tmp_path)
    assert not (tmp_path / "runs").exists()
    assert seconds < 10.0, f"took {seconds:.1f}s"  # Ray's start alone takes 10-40 s here


def test_inspect_says_where_a_bare_plot_name_went(tmp_path):
    _write_shop(tmp_path, [1, 1, 1])
    r, _ = _ltray("data", "inspect", "--items", "items.csv", "--interactions", "inter.csv", "--plot", "lt.png",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"long-tail plot: {tmp_path / 'lt.png'}" in " ".join(r.stdout.split())
    assert (tmp_path / "lt.png").is_file()


def test_the_manifest_of_a_reader_run_is_untouched(tmp_path):
    """`recommend` on a run that is not fitted yet names the missing stages and writes nothing."""
    store = ArtifactStore(tmp_path / "run")
    with store.writing("data") as w:
        (w / "x.txt").write_text("x")
    before = (tmp_path / "run" / "manifest.json").read_bytes()
    (tmp_path / "u.txt").write_text("c1\n")
    r, _ = _ltray("recommend", "--artifacts", "run", "--users", "u.txt", cwd=tmp_path)
    line = _one_error_line(r)
    assert "is not a fitted run" in line and "embed, cf, index missing" in line
    assert (tmp_path / "run" / "manifest.json").read_bytes() == before
    assert json.loads(before)["stages"].keys() == {"data"}


def test_data_whose_other_half_cannot_train_a_ranker_still_fits(ray_cluster, tmp_path):
    """The operating point is cross-fitted (each half's ranker lists the other half) where both halves can
    train a ranker; where only the ranker's half can (all the size checks promise), it is chosen on the
    other half with that ranker alone, and the run completes."""
    from ltray.logs import lines_to
    from ltray.pipeline import run

    cfg = load_config()
    users = [f"u{i}" for i in range(6)]
    half = set(ranker_halves(pd.Series(users).to_numpy(), np.random.default_rng(cfg.rank.seed))[0])
    ds = _dataset({u: (12 if u in half else 6) for u in users})
    ds.items.assign(title=ds.items["item_id"]).to_csv(tmp_path / "items.csv", index=False)
    ds.interactions.to_csv(tmp_path / "interactions.csv", index=False)
    cfg = build_config(None, ["eval.baselines=[mostpop]"], items=str(tmp_path / "items.csv"),
                       interactions=str(tmp_path / "interactions.csv"))
    assert check_fit_sizes(load_checked(cfg, True), cfg, holdout=True).ok
    logs: list[str] = []
    with lines_to(logs.append):
        run(cfg, str(tmp_path / "art"))
    assert any("too small to train a ranker of its own" in line for line in logs), logs
    trained = [line for line in logs if "choice ranker" in line]
    assert len(trained) == 1 and "first half" in trained[0]
    blend = json.loads((tmp_path / "art" / "rank" / "blend.json").read_text())
    assert blend["chosen_on"] == "validation" and blend["curve"]
