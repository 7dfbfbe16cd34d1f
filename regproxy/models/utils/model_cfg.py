import copy


def sync_bn_to_bn(cfg):
    """Replace every ``SyncBN`` norm config by ``BN`` in a nested config, in
    place, and return it. SyncBN needs a distributed CUDA process group; on
    the CPU or in a single process BN computes the same statistics."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            sync_bn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            sync_bn_to_bn(value)
    return cfg


def standalone_model_cfg(model_cfg: dict) -> dict:
    """A copy of a segmentor config that builds in one process and reads no
    weights file: BN for SyncBN, no ``pretrained`` or backbone ``init_cfg``
    (the tools that use it load a checkpoint or keep the random weights)."""
    cfg = sync_bn_to_bn(copy.deepcopy(model_cfg))
    cfg['pretrained'] = None
    cfg['backbone'].update(pretrained=None, init_cfg=None)
    return cfg
