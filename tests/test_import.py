"""Importing the plugin changes nothing outside its own registries."""
import subprocess
import sys

from tests.conformance import REPO_ROOT

CHECK = """
# What the plugin builds on, imported first: torch's own modules add to its
# safe globals on import (torch.distributed.tensor).
import mmcv.ops, mmseg.apis, timm, torch  # noqa: F401
from mmengine.fileio.backends import registry_utils
from mmengine.runner import CheckpointLoader

def state():
    return (dict(registry_utils.backends),
            dict(registry_utils.prefix_to_backends),
            dict(CheckpointLoader._schemes),
            list(torch.serialization.get_safe_globals()))

before = state()
import regproxy  # noqa: F401
after = state()
backends, prefixes, schemes, safe_globals = after
assert prefixes == before[1], (prefixes, before[1])
assert schemes == before[2], 'checkpoint loaders changed'
assert safe_globals == before[3], 'torch safe globals changed'
assert {k: v for k, v in backends.items() if k != 'atomic_local'} == before[0]
assert backends['local'] is before[0]['local']
print('unchanged')
"""


def test_import_leaves_mmengine_and_torch_untouched():
    result = subprocess.run([sys.executable, '-c', CHECK], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'unchanged'
