"""Config rewrites for the tools that build a segmentor on their own."""
import copy


def standalone_model_cfg(model_cfg: dict) -> dict:
    """A copy of a segmentor config that reads no weights file.

    ``pretrained`` and the backbone's ``init_cfg`` are cleared: the tools
    that use it load a checkpoint or keep the random weights. ``SyncBN``
    stays: torch's ``SyncBatchNorm`` computes plain batch norm in a process
    without a process group.

    Args:
        model_cfg (dict): the config's ``model``; left unchanged.

    Returns:
        dict: the rewritten copy.
    """
    cfg = copy.deepcopy(model_cfg)
    cfg['pretrained'] = None
    cfg['backbone'].update(pretrained=None, init_cfg=None)
    return cfg
