import pytest
import torch

torch.set_num_threads(2)



@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory):
    """A digits teacher trained once for the whole session with the fixed recipe."""
    from pcbench.teachers import TeacherStore

    store = TeacherStore(tmp_path_factory.mktemp("teachers"))
    store.ensure("cnn_large", "digits")
    return store


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray instance shared by the tests that need it."""
    import ray

    from pcbench.launch.cluster import start_ray

    start_ray(num_cpus=2, dashboard=True)  # as pcbench does for DDP trials
    yield
    ray.shutdown()
