from contextlib import contextmanager
from typing import Union

import torch
import torch.nn as nn
from mmengine.device import get_device
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS

__all__ = ['AutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """Mixed precision by autocast alone, without loss scaling.

    mmengine 0.10.7's ``AmpOptimWrapper`` asserts a GPU (or NPU, MLU, MUSA)
    at construction. bfloat16 has float32's exponent range, so its
    gradients need no loss scaling: autocast is all it takes, on the CPU
    too. ``train.py --amp`` uses this wrapper when there is no CUDA device.

    Args:
        dtype (str | torch.dtype): autocast precision. Default: 'bfloat16'.
        **kwargs: ``OptimWrapper`` arguments.
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype,
                                                              str) else dtype

    @contextmanager
    def optim_context(self, model: nn.Module):
        """``OptimWrapper``'s context (gradient sync) plus autocast.

        Args:
            model (nn.Module): the model being trained.
        """
        with super().optim_context(model), torch.autocast(
                device_type=get_device(), dtype=self.cast_dtype):
            yield
