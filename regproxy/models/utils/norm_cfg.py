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
