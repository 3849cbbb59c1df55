"""Shared fixtures: one local Ray cluster per test session, the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LTRAY_DATA_HOME", str((REPO.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def load_benchmark():
    """A script of benchmarks/ as a module (the folder is not a package), by its file name."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster, started once and shared by every test that needs Ray."""
    import ray

    from ltray.raysession import start_private

    if not ray.is_initialized():  # private and reaped with pytest, as the CLI's: a killed run leaks nothing
        start_private(num_cpus=2, include_dashboard=False, log_to_driver=False,
                      runtime_env={"env_vars": {"LTRAY_DATA_HOME": os.environ["LTRAY_DATA_HOME"],
                                                "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    # Serve (if a test started it) and Ray go down once, at the end of the session.
    try:
        from ray import serve
        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def movielens():
    from ltray.data import movielens as ml
    return ml.load()


@pytest.fixture(scope="session")
def small_config():
    """A config small enough for fast end-to-end tests on the synthetic generator."""
    from ltray.config import load_config
    return load_config(overrides=[
        "data.synthetic.n_items=600", "data.synthetic.n_users=300", "data.synthetic.interactions_per_user=25",
        "cf.iterations=8", "rank.epochs=2", "rank.batch_size=256",
        "rank.refit_on_all=false",  # one ranker training: these tests check plumbing, not the numbers
        # No CF search (tests/test_cf_tune.py checks it); a fixed mix keeps both CF sources in every score.
        "cf.tune=false", "cf.mix=0.5",
    ])


@pytest.fixture(scope="session")
def small_synthetic(small_config):
    from ltray.data.synthetic import generate
    return generate(small_config.data.synthetic)


@pytest.fixture(scope="session")
def serve_artifacts(ray_cluster, small_config, tmp_path_factory) -> str:
    """A run fitted once on the small synthetic config (the whole pipeline, real models), for every test that
    serves or reads a fitted run."""
    from ltray.pipeline import fit

    if os.environ.get("LTRAY_SERVE_TEST_ARTIFACTS"):  # a run fitted on small_config, to iterate faster
        return os.environ["LTRAY_SERVE_TEST_ARTIFACTS"]
    art = tmp_path_factory.mktemp("serve-run") / "art"
    fit(small_config, str(art))
    return str(art)
