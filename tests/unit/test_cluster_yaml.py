"""cluster.yaml passes Ray's own cluster-config schema check, and places work where intended."""

from pathlib import Path

import yaml

CLUSTER_YAML = Path(__file__).parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(prepare_config(config))  # raises on any schema violation


def test_shards_and_trainers_land_on_gpu_workers_not_the_head():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    assert "memory_shard" not in head and "trainer" not in head
    workers = [t["resources"] for name, t in types.items() if name != config["head_node_type"]]
    assert any(r.get("GPU", 0) >= 1 and r.get("memory_shard", 0) >= 1 and r.get("trainer", 0) >= 1
               for r in workers)


def test_the_schema_check_rejects_a_broken_config():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["gpu_worker"]["resources"] = "GPU: 1"  # not a mapping
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_every_ray_start_of_the_cluster_turns_token_auth_on_or_keeps_the_dashboard_on_loopback():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in config[key] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        loopback = "--dashboard-host" not in command or "--dashboard-host=127.0.0.1" in command
        assert "RAY_AUTH_MODE=token" in command or loopback, command
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    if "--dashboard-host=0.0.0.0" in head:  # reachable from outside: token auth, one token
        assert "RAY_AUTH_MODE=token" in head
        assert any(remote.endswith("/.ray/auth_token") for remote in config["file_mounts"])
        for key in ("head_setup_commands", "worker_setup_commands"):  # `ray job submit` too
            assert any("RAY_AUTH_MODE=token" in c for c in config[key]), key
