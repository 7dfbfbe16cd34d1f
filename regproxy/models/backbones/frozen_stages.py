"""The ``frozen_stages`` argument shared by the RegionProxy backbones."""


def check_frozen_stages(frozen_stages: int, num_layers: int) -> None:
    """Refuse a ``frozen_stages`` that names no prefix of the backbone.

    The meaning is mmpretrain's for ViTs: -1 freezes nothing, 0 the patch
    and position embeddings (and the prefix tokens), N also the first N
    layers, ``num_layers`` the whole backbone.

    Raises:
        ValueError: not an int from -1 to ``num_layers``.
    """
    if (isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int)
            or not -1 <= frozen_stages <= num_layers):
        raise ValueError(
            f'frozen_stages={frozen_stages!r} is out of range: expected an '
            f'int from -1 (nothing frozen) to {num_layers} (the whole '
            f'backbone, num_layers={num_layers}); 0 freezes the embeddings, '
            'N also the first N layers')
