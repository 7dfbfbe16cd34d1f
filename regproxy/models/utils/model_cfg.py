def sync_bn_to_bn(cfg):
    """Replace every ``SyncBN`` norm config by ``BN`` in a nested config, in
    place, and return it: a model whose batch norm never synchronises, even
    inside a process group."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            sync_bn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            sync_bn_to_bn(value)
    return cfg
