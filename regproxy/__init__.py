"""RegionProxy (CVPR 2022) as an mmsegmentation 1.x plugin.

Importing the package registers its models, datasets and hooks with mmseg's
registries; configs pull it in with ``custom_imports``.
"""
from .datasets import *  # noqa: F401,F403
from .engine import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403

__version__ = '1.0.0'
