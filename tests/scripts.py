"""Import the repository's scripts (``train.py``, ``tools/...``) in tests."""
import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """The script ``REPO/relative`` as a module under a private name."""
    path = REPO / relative
    name = 'regproxy_script_' + relative.replace('/', '_').replace('.', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
