from contextlib import contextmanager
from typing import Union

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.device import get_device
from mmseg.registry import OPTIM_WRAPPERS

__all__ = ['AutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """Mixed precision by autocast alone, without loss scaling.

    mmengine's ``AmpOptimWrapper`` refuses to run without an accelerator.
    With bfloat16, which has float32's exponent range, gradients do not
    underflow and need no loss scaling, so autocast in the forward pass is
    all mixed precision takes; this also works on the CPU. ``train.py
    --amp`` uses it when there is no CUDA device.

    Args:
        dtype (str | torch.dtype): autocast precision. Default: 'bfloat16'.
        **kwargs: ``OptimWrapper`` arguments (``optimizer``, ``clip_grad``,
            ``accumulative_counts``).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype,
                                                              str) else dtype

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Gradient-sync handling of ``OptimWrapper`` plus autocast.

        Args:
            model (nn.Module): the model being trained.
        """
        with super().optim_context(model), torch.autocast(
                device_type=get_device(), dtype=self.cast_dtype):
            yield
