"""deployments/serve_config.yaml: which run it serves (LTRAY_ARTIFACTS or an absolute path) and its port."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "deployments" / "serve_config.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_the_file_names_no_path_relative_to_where_ray_started(raw):
    """A relative artifacts path resolves against the replicas' working directory: the repo root only by luck."""
    args = raw["applications"][0]["args"]
    artifacts = args.get("artifacts")
    assert artifacts is None or "://" in artifacts or Path(artifacts).is_absolute(), artifacts
    text = CONFIG.read_text()
    assert "LTRAY_ARTIFACTS" in text and "http_options.port" in text  # both ways documented in the file
    assert isinstance(raw["http_options"]["port"], int)


def test_the_builder_takes_the_run_from_the_environment(raw, monkeypatch):
    from deployments.app import serve_config_from_args

    args = dict(raw["applications"][0]["args"])
    monkeypatch.setenv("LTRAY_ARTIFACTS", "/srv/ltray/runs/movielens")
    uri, cfg = serve_config_from_args(args)
    assert uri == "/srv/ltray/runs/movielens" and cfg.topology == "chain"
    # An explicit argument wins over the environment.
    assert serve_config_from_args({**args, "artifacts": "s3://bucket/run"})[0] == "s3://bucket/run"
    monkeypatch.delenv("LTRAY_ARTIFACTS")
    with pytest.raises(ValueError, match="LTRAY_ARTIFACTS"):
        serve_config_from_args(args)
