from .checkpoint_filter import (checkpoint_filter_fn, is_timm_vit,
                                unwrap_state_dict)

__all__ = ['checkpoint_filter_fn', 'is_timm_vit', 'unwrap_state_dict']
