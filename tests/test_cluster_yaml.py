"""cluster.yaml: valid for `ray up` (Ray's own schema and defaults, offline), and big enough for the jobs.

What the jobs ask for comes from the code that asks (``actor_pool_spec`` for embedding actors, the
rank config for Ray Train workers) and from the cluster command in docs/scaling.md, so the file, the
docs and the code cannot drift apart unnoticed.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import yaml

from ltray.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
DOC = REPO / "docs" / "scaling.md"
DOC_MARKER = "parsed by tests/test_cluster_yaml.py"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def documented_job() -> tuple[list[str], dict[str, str]]:
    """The `--set` overrides and other options of the cluster command in docs/scaling.md."""
    text = DOC.read_text()
    block = text[text.index(DOC_MARKER):].split("```bash", 1)[1].split("```", 1)[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert "jobs/pipeline.py" in argv and argv[:3] == ["ray", "job", "submit"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    opts = {a: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--") and a != "--set" and i + 1 < len(argv)}
    return sets, opts


def _workers(cluster: dict) -> dict[str, dict]:
    return {k: v for k, v in cluster["available_node_types"].items() if k != cluster["head_node_type"]}


def _full_scale(cluster: dict) -> dict[str, float]:
    """Resources of the cluster with every group at max_workers."""
    total: dict[str, float] = {}
    for name, count in [(cluster["head_node_type"], 1)] + [(k, v["max_workers"]) for k, v in _workers(cluster).items()]:
        for r, q in cluster["available_node_types"][name]["resources"].items():
            total[r] = total.get(r, 0) + q * count
    return total


def _fits(bundle: dict[str, float], node: dict) -> bool:
    return all(node["resources"].get(r, 0) >= q for r, q in bundle.items() if q > 0)


def _packing(bundle: dict[str, float], node: dict) -> int:
    """How many copies of `bundle` one node of this type holds."""
    return min(int(node["resources"].get(r, 0) // q) for r, q in bundle.items() if q > 0)


# ----------------------------------------------------------------------------------------------
def test_parses_with_the_launcher_keys(cluster):
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cluster, key
    assert cluster["provider"]["type"] == "aws" and cluster["provider"]["region"]
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_ray_up_validation_offline(cluster):
    """What `ray up` does to the file before it talks to the cloud: fill defaults, validate the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(cluster)
    validate_config(prepared)
    # Resources are declared, not auto-detected (auto-detection needs AWS credentials at `ray up`).
    for name, node in prepared["available_node_types"].items():
        assert "CPU" in node["resources"], name
        assert node["node_config"]["InstanceType"], name
    broken = {**cluster, "available_node_types": {**cluster["available_node_types"],
                                                 "worker.cpu": {"min_workers": 0, "max_workers": 2}}}
    with pytest.raises(Exception, match="resources|node_config"):
        validate_config(prepare_config(broken))


def test_worker_groups_autoscale_within_the_global_cap(cluster):
    workers = _workers(cluster)
    assert len(workers) >= 2
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
        assert node["max_workers"] >= 1 and node["max_workers"] > node["min_workers"], f"{name} cannot scale"
    assert sum(n["min_workers"] for n in workers.values()) <= cluster["max_workers"]
    assert max(n["max_workers"] for n in workers.values()) <= cluster["max_workers"]
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0  # drivers only


def test_one_cpu_group_and_one_gpu_group_on_g5_or_g6(cluster):
    workers = _workers(cluster)
    gpu = [n for n in workers.values() if n["resources"].get("GPU", 0) >= 1]
    cpu = [n for n in workers.values() if n["resources"].get("GPU", 0) == 0]
    assert len(gpu) == 1 and len(cpu) >= 1
    assert re.match(r"g[56]\.", gpu[0]["node_config"]["InstanceType"])
    assert all(n["resources"]["CPU"] >= 1 for n in workers.values())


def test_setup_installs_ltray_with_the_gpu_extra(cluster):
    cmds = " ".join(cluster["setup_commands"])
    assert re.search(r"pip install[^;]*ltray\[gpu\]", cmds), cmds
    assert "ray[" in cmds and "2.60" in cmds
    assert cluster["file_mounts"].get("~/ltray") == "."
    # Token auth: every node starts Ray in token mode with the token the launcher copied there.
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in cluster[key]), key


def test_embedding_actors_land_on_gpu_nodes(cluster, documented_job):
    from ltray.embed.stage import actor_pool_spec

    sets, _ = documented_job
    cfg = load_config(overrides=sets)
    full = _full_scale(cluster)
    spec = actor_pool_spec(full, cfg.embed)
    assert spec.num_gpus_per_actor == 1
    bundle = {"CPU": spec.num_cpus_per_actor, "GPU": spec.num_gpus_per_actor}
    hosts = [n for n in _workers(cluster).values() if _fits(bundle, n)]
    assert hosts and all(n["resources"].get("GPU", 0) >= 1 for n in hosts)
    assert spec.num_actors <= sum(_packing(bundle, n) * n["max_workers"] for n in hosts)
    # Nothing else on the cluster offers a GPU, so num_gpus=1 actors cannot land elsewhere.
    assert full["GPU"] == sum(n["resources"].get("GPU", 0) * n["max_workers"] for n in hosts)


def test_cpu_only_embedding_fits_too(cluster):
    from ltray.embed.stage import actor_pool_spec

    cfg = load_config(overrides=["embed.device=cpu", "embed.cpus_per_actor=4"])
    spec = actor_pool_spec(_full_scale(cluster), cfg.embed)
    bundle = {"CPU": spec.num_cpus_per_actor}
    assert spec.num_gpus_per_actor == 0
    assert spec.num_actors <= sum(_packing(bundle, n) * n["max_workers"] for n in _workers(cluster).values())


def test_default_embed_sizing_fits_a_gpu_node(cluster):
    """Without embed.* overrides, a full-size cluster still gets GPU actors that a GPU node can hold."""
    from ltray.embed.stage import actor_pool_spec

    spec = actor_pool_spec(_full_scale(cluster), load_config().embed)
    bundle = {"CPU": spec.num_cpus_per_actor, "GPU": spec.num_gpus_per_actor}
    assert spec.num_gpus_per_actor == 1
    assert spec.num_actors <= sum(_packing(bundle, n) * n["max_workers"] for n in _workers(cluster).values())


@pytest.mark.parametrize("source", ["defaults", "documented"])
def test_train_workers_fit(cluster, documented_job, source):
    sets = documented_job[0] if source == "documented" else []
    rank = load_config(overrides=sets).rank
    full = _full_scale(cluster)
    use_gpu = rank.use_gpu == "always" or (rank.use_gpu == "auto" and full.get("GPU", 0) >= rank.num_workers)
    cpus = rank.cpus_per_worker if rank.cpus_per_worker is not None else 1.0  # auto sizing gives at most 1
    bundle = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    capacity = sum(_packing(bundle, n) * n["max_workers"] for n in _workers(cluster).values())
    assert capacity >= rank.num_workers, (bundle, rank.num_workers, capacity)
    if source == "documented":  # a cluster run reserves real CPUs per worker and uses several nodes' worth
        assert rank.cpus_per_worker is not None and rank.num_workers * cpus > max(
            n["resources"]["CPU"] for n in _workers(cluster).values())
        assert str(rank.storage_path).startswith("s3://")


def test_documented_job_options_fit(cluster, documented_job):
    """The build task and the artifact store of the documented command suit the cluster."""
    sets, opts = documented_job
    load_config(overrides=sets)  # every documented override is a real, well-typed field
    assert opts["--artifacts"].startswith("s3://")
    # The stage task must not fit the head (CPU: 0) and must fit a worker.
    stage_cpus = float(opts.get("--stage-cpus", 0.0))
    assert stage_cpus > cluster["available_node_types"][cluster["head_node_type"]]["resources"].get("CPU", 0)
    assert any(n["resources"]["CPU"] >= stage_cpus for n in _workers(cluster).values())
    assert "--working-dir" in opts and "--runtime-env-json" in opts
    assert math.isfinite(float(opts["--stage-memory-gb"]))


def test_the_exposure_note_names_the_ports_the_head_opens(cluster):
    """cluster.yaml's header says what a running cluster listens on and how it is protected; the GCS port it
    names is the one the head starts with, and the dashboard's bind address matches what it says."""
    note = CLUSTER.read_text().split("What a running cluster listens on", 1)[1].split("\n\n", 1)[0]
    head = " ".join(cluster["head_start_ray_commands"])
    gcs_port = re.search(r"--port=(\d+)", head).group(1)
    assert re.search(rf"head\s+{gcs_port}\s+GCS", note), note
    for port, what in (("8265", "dashboard"), ("10001", "Ray Client"), ("8000", "Serve")):
        assert any(port in line and what in line for line in note.splitlines()), (port, what)
    assert "metrics export port" in note and "security group" in note and "Token auth" in note
    dash_host = re.search(r"--dashboard-host=(\S+)", head).group(1)
    assert f"--dashboard-host={dash_host}" in note
