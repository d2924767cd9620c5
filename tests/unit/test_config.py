"""Job configs: YAML plus overrides into frozen dataclasses; unknown keys are all reported."""

from dataclasses import dataclass, field

import pytest

from lifelong.config import config_from_dict, config_to_dict, load_config, parse_overrides
from lifelong.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    size: int = 4
    rate: float = 0.5

    def __post_init__(self):
        if self.size <= 0:
            raise ValueError("size must be positive")


@dataclass(frozen=True)
class Outer:
    name: str = "job"
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides_fill_nested_dataclasses(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: a\ninner:\n  size: 8\n")
    cfg = load_config(Outer, path, ["inner.rate=2", "sizes=[3, 4]"])
    assert cfg == Outer(name="a", sizes=(3, 4), inner=Inner(size=8, rate=2.0))
    assert config_to_dict(cfg) == {"name": "a", "sizes": (3, 4), "inner.size": 8,
                                   "inner.rate": 2.0}


def test_every_unknown_key_is_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("nmae: a\ninner:\n  sise: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path, ["inner.rat=1"])
    assert all(key in str(info.value) for key in ("nmae", "inner.sise", "inner.rat"))


def test_invalid_values_and_files_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="size must be positive"):
        load_config(Outer, None, ["inner.size=0"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["no-equals-sign"])


def test_every_wrong_key_of_a_training_job_is_named_before_any_work():
    from lifelong.experiments.omniglot.config import OmniglotTrainJob

    with pytest.raises(ConfigError) as info:
        load_config(OmniglotTrainJob, None, [
            "train.stpes=10", "train.lr=-1", "train.way=0", "model.encoder=resnet",
            "ray.num_workers=0", "shared_memory.shards=zero", "retention.delays=[0]"])
    message = str(info.value)
    for wrong in ("train.stpes", "train.lr", "train.way", "model.encoder", "ray.num_workers",
                  "shared_memory.shards", "retention.delays"):
        assert wrong in message, (wrong, message)
    assert "7 problems" in message


def test_the_shipped_training_configs_load():
    from lifelong.cli import CONFIG_DIR
    from lifelong.experiments.omniglot.config import OmniglotTrainJob

    bench = CONFIG_DIR.parents[1] / "benchmarks" / "configs"
    for path in (CONFIG_DIR / "train_omniglot.yaml", CONFIG_DIR / "demo.yaml",
                 bench / "bench_train_workers.yaml"):
        job = load_config(OmniglotTrainJob, path)
        assert job.ray.enabled


def test_a_partial_section_keeps_the_jobs_own_defaults_for_it():
    from lifelong.streaming.config import StreamJob

    job = config_from_dict(StreamJob, {"stream": {"source": "x"},
                                       "tracking": {"enabled": False}})
    assert job.tracking.experiment == "stream" and not job.tracking.enabled


def test_one_memory_config_named_by_its_full_key_path_in_every_job():
    from lifelong.experiments.omniglot.config import OmniglotTrainJob
    from lifelong.experiments.translation.config import TranslationJob
    from lifelong.streaming.config import StreamJob

    cases = [(OmniglotTrainJob, [], "memory.alpha=0", "memory.alpha must be > 0"),
             (TranslationJob, [], "memory.age_noise=-1", "memory.age_noise must be >= 0"),
             (StreamJob, ["stream.source=x"], "memory.choose_k=0",
              "memory.choose_k must be an int >= 1"),
             (StreamJob, ["stream.source=x"], "shared_memory.num_slots=0",
              "shared_memory.num_slots must be an int >= 1"),
             (OmniglotTrainJob, [], "shared_memory.name=a/../b", "shared_memory.name invalid")]
    for cls, base, override, message in cases:
        with pytest.raises(ConfigError) as info:
            load_config(cls, None, [*base, override])
        assert message in str(info.value), (override, str(info.value))
    # the same section alone names its field, and the error survives pickling (Ray)
    import pickle

    from lifelong.memory import MemoryConfig

    with pytest.raises(ConfigError, match="^alpha must be > 0") as info:
        MemoryConfig(alpha=0)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_a_memory_spec_is_a_memory_config_and_the_shared_section_converts_once(tmp_path):
    import json

    from lifelong.distributed.spec import MemorySpec, SharedMemoryConfig
    from lifelong.memory import MemoryConfig

    memory = MemoryConfig(choose_k=16, alpha=0.2, age_noise=0.0, use_recent=False)
    shared = SharedMemoryConfig(name="m", num_slots=64, shards=2, storage=str(tmp_path))
    spec = shared.spec(memory, key_dim=8, num_values=10, seed=3)
    assert isinstance(spec, MemoryConfig) and spec.memory_config() == memory
    assert (spec.name, spec.key_dim, spec.num_slots, spec.num_values, spec.storage,
            spec.shards, spec.seed) == ("m", 8, 64, 10, str(tmp_path), 2, 3)
    assert MemorySpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="num_values"):  # no label range from job or section
        shared.spec(memory, key_dim=8)
    # a manifest written before use_recent was a field loads with the default
    old = json.loads(spec.to_json())
    del old["use_recent"]
    assert MemorySpec.from_json(json.dumps(old)).use_recent is True
    # the built local memory carries the same hyper-parameters
    assert MemoryConfig.of(memory.build(key_dim=8, num_slots=64, num_values=10)) == memory
