import pytest

from regproxy.datasets import generate_shapes_dataset


@pytest.fixture(scope='session')
def small_root(tmp_path_factory):
    """A generated shapes dataset of 6 training and 3 validation images."""
    return generate_shapes_dataset(
        str(tmp_path_factory.mktemp('data') / 'shapes'),
        num_train=6,
        num_val=3)
