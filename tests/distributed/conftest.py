import pytest


@pytest.fixture
def ray_local(tmp_path_factory):
    """A local Ray of 4 CPUs with its own temp dir, shut down afterwards."""
    ray = pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=str(temp), namespace="lifelong",
             log_to_driver=False)
    yield ray
    ray.shutdown()
