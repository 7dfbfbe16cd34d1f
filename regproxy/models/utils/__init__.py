from .checkpoint_filter import (checkpoint_filter_fn, is_timm_vit,
                                unwrap_state_dict)
from .model_cfg import sync_bn_to_bn

__all__ = [
    'checkpoint_filter_fn', 'is_timm_vit', 'unwrap_state_dict',
    'sync_bn_to_bn'
]
