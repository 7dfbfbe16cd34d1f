import torch.nn as nn
from mmengine.model import BaseTTAModel, is_model_wrapper

__all__ = ['unwrap_model']


def unwrap_model(model: nn.Module) -> nn.Module:
    """The segmentor inside DDP-style wrappers and the test-time
    augmentation wrapper (``BaseTTAModel``), which hold it in ``module``."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model
