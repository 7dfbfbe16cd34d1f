from .checkpoint_filter import (checkpoint_filter_fn, convert_vit_checkpoint,
                                unwrap_state_dict)
from .model_cfg import standalone_model_cfg, sync_bn_to_bn
from .pos_embed import resample_abs_pos_embed

__all__ = [
    'checkpoint_filter_fn', 'convert_vit_checkpoint', 'unwrap_state_dict',
    'resample_abs_pos_embed', 'standalone_model_cfg', 'sync_bn_to_bn'
]
