import pytest


@pytest.fixture(autouse=True, scope='session')
def _mmseg_scope():
    from mmseg.utils import register_all_modules

    import regproxy  # noqa: F401 registers our modules
    register_all_modules(init_default_scope=True)
