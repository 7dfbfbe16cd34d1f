"""Convert a released mmseg 0.x RegionProxy checkpoint to an mmseg 1.x one.

    python tools/model_converters/regproxy_0x_to_1x.py IN OUT [--config CONFIG]

IN is a checkpoint of the original release (mmseg 0.x):
``{'state_dict': {backbone.*, decode_head.*}, 'meta': {'CLASSES': ...,
'PALETTE': ..., 'config': ..., 'mmseg_version': '0.x', ...}}``, often with an
``optimizer`` entry. OUT holds the same weights and mmseg 1.x meta data:
``meta.dataset_meta`` with ``classes`` and ``palette`` (from the 0.x
``CLASSES``/``PALETTE``, else from the config's dataset) and ``meta.cfg``,
the config's text; the optimizer state is dropped. ``mmseg.apis.init_model``
and ``MMSegInferencer`` then show the class names, and ``torch.load`` reads
OUT with ``weights_only=True``. An OUT ending in ``.safetensors`` holds the
weights only: a safetensors file holds tensors, so the meta data is not
written.

CONFIG is the 1.x config of the model; without ``--config`` it is the config
of the original release (``configs/regproxy_ade20k``,
``configs/regproxy_cityscapes``) whose model has exactly the keys and shapes
of IN. The weights must load into the config's model with nothing
missing, unexpected or of another shape; other files (ImageNet ViT weights,
files without a ``state_dict``, another model's weights) are refused with a
message that names what is missing. OUT is written atomically.
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from regproxy.datasets import leaf_datasets
from regproxy.engine import (CheckpointError, load_checkpoint_file,
                             load_weights, save_checkpoint_file)
from regproxy.engine.checkpoint import refuse_imagenet_vit
from regproxy.models.utils.safe_checkpoint_loader import (
    revise_state_dict, state_dict_mismatches)
from regproxy.utils import add_trust_checkpoint_arg, fail, standalone_model_cfg

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = REPO / 'configs'
# The configs of the original (mmseg 0.x) release of RegionProxy.
RELEASED = ('regproxy_ade20k', 'regproxy_cityscapes')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert a released mmseg 0.x RegionProxy checkpoint '
        'to an mmseg 1.x checkpoint with dataset_meta.')
    parser.add_argument('src', metavar='IN', help='mmseg 0.x checkpoint')
    parser.add_argument(
        'dst', metavar='OUT',
        help='1.x checkpoint to write (*.safetensors: the weights only)')
    parser.add_argument(
        '--config',
        help='1.x config of the model (default: the released config whose '
        'model has the keys and shapes of IN)')
    add_trust_checkpoint_arg(parser)
    return parser.parse_args(argv)


def segmentor_state_dict(checkpoint, source: str) -> Dict[str, torch.Tensor]:
    """The segmentor weights of a 0.x (or 1.x) checkpoint.

    Args:
        checkpoint: the loaded file.
        source (str): the file, for the messages.

    Returns:
        dict: the ``state_dict``, ``module.`` prefixes removed.

    Raises:
        CheckpointError: the file holds no segmentor ``state_dict`` (or
            ImageNet ViT weights); the message says what it holds.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'{source} holds a {type(checkpoint).__name__}; expected a dict '
            "with 'state_dict' and 'meta' (an mmseg 0.x checkpoint)")
    refuse_imagenet_vit(checkpoint, source)
    weights = checkpoint.get('state_dict')
    if not isinstance(weights, dict):
        keys = ', '.join(repr(k) for k in list(checkpoint)[:10]) or 'none'
        raise CheckpointError(
            f"{source} has no 'state_dict' (its top-level keys: {keys}); "
            "expected an mmseg 0.x checkpoint {'state_dict': ..., "
            "'meta': ...}")
    return revise_state_dict(weights)  # DDP's module. removed


def build_model(cfg: Config, device: str = 'cpu') -> torch.nn.Module:
    """The config's segmentor without any weights file."""
    from mmseg.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    with torch.device(device):
        return MODELS.build(standalone_model_cfg(cfg.model))


def find_config(weights: Dict[str, torch.Tensor], source: str) -> Path:
    """The released config whose model has exactly the keys and shapes of
    ``weights``.

    The candidates are the configs of the original release
    (``configs/regproxy_ade20k``, ``configs/regproxy_cityscapes``); their
    models are built on the meta device (no memory, no initialisation).

    Raises:
        CheckpointError: no config fits (the closest one and its
            differences are named), or several do.
    """
    candidates = sorted(p for folder in RELEASED
                        for p in (PUBLISHED / folder).glob('*.py'))
    differences = {
        path: state_dict_mismatches(
            build_model(Config.fromfile(path), 'meta'), weights)
        for path in candidates
    }
    matches = [p for p, found in differences.items() if not found]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CheckpointError(
            f'{source} fits {len(matches)} released configs '
            f'({", ".join(p.name for p in matches)}); name its config with '
            '--config')
    closest = min(candidates, key=lambda p: len(differences[p]))
    shown = '; '.join(differences[closest][:5])
    more = len(differences[closest]) - 5
    raise CheckpointError(
        f'the keys and shapes of {source} ({len(weights)} tensors) fit none '
        f'of the {len(candidates)} released configs; the closest is '
        f'{closest} with {len(differences[closest])} difference(s): {shown}'
        f'{f" and {more} more" if more > 0 else ""}. Name its config with '
        '--config')


def _config_metainfo(cfg: Config) -> dict:
    """``classes`` and ``palette`` of the config's dataset: its ``metainfo``
    entry, else the dataset class's ``METAINFO``."""
    from mmseg.registry import DATASETS
    for split in ('test', 'val', 'train'):
        loader = cfg.get(f'{split}_dataloader') or {}
        for dataset in leaf_datasets(loader.get('dataset') or {}):
            metainfo = dict(getattr(DATASETS.get(dataset.get('type')),
                                    'METAINFO', {}))
            metainfo.update(dataset.get('metainfo') or {})
            if metainfo.get('classes'):
                return metainfo
    return {}


def _plain_palette(palette, source: str) -> List[List[int]]:
    """A palette as a list of [r, g, b] ints (what weights-only loading
    reads without help), checked."""
    colours = []
    for index, colour in enumerate(palette):
        colour = [int(c) for c in colour]
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise CheckpointError(
                f'{source}: palette entry {index} is {colour}; expected '
                '[r, g, b] with values in [0, 255]')
        colours.append(colour)
    return colours


def dataset_meta(meta: dict, cfg: Config, num_classes: int,
                 source: str) -> Tuple[dict, str]:
    """``classes`` and ``palette`` for the 1.x meta data, and where they
    come from.

    The 0.x ``CLASSES``/``PALETTE`` (or a 1.x ``dataset_meta``) of the
    checkpoint come first, then the config's dataset. There must be one
    class name and one colour per output class of the model.
    """
    own = meta.get('dataset_meta') or {}
    classes = own.get('classes') or meta.get('CLASSES')
    palette = own.get('palette') if own.get('classes') else meta.get(
        'PALETTE')
    origin = 'the checkpoint\'s meta data'
    fallback = _config_metainfo(cfg)
    if not classes:
        classes, palette = fallback.get('classes'), fallback.get('palette')
        origin = f'the config\'s dataset ({cfg.filename})'
        if not classes:
            raise CheckpointError(
                f'{source} has no class names (meta.CLASSES) and the '
                'config\'s dataset has no METAINFO classes; expected one '
                'of them')
    elif palette is None and len(fallback.get('classes') or ()) == len(
            classes):
        palette = fallback.get('palette')
        origin += ', colours from the config\'s dataset'
    classes = tuple(str(c) for c in classes)
    if len(classes) != num_classes:
        raise CheckpointError(
            f'{source}: {origin} lists {len(classes)} classes, the model has '
            f'{num_classes} (decode_head.num_classes); expected one name '
            'per class')
    if palette is None or len(palette) != num_classes:
        count = 'none' if palette is None else len(palette)
        raise CheckpointError(
            f'{source}: {origin} has {count} palette colours for '
            f'{num_classes} classes; expected one [r, g, b] per class')
    return dict(classes=classes,
                palette=_plain_palette(palette, source)), origin


def convert(checkpoint: dict, weights: Dict[str, torch.Tensor],
            cfg: Config, source: str) -> Tuple[dict, str]:
    """Check ``weights`` against the config's model and build the 1.x
    checkpoint.

    Returns:
        tuple: (the 1.x checkpoint, where its classes come from).

    Raises:
        CheckpointError: the weights do not load strictly into the model,
            or the class names and colours do not fit it.
    """
    model = build_model(cfg)
    load_weights(model, {'state_dict': weights}, source, strict=True,
                 logger=None, remedy=f'Expected the model of {cfg.filename}: '
                 'name its config with --config')
    meta = checkpoint.get('meta') or {}
    classes, origin = dataset_meta(meta, cfg, model.decode_head.num_classes,
                                   source)
    import mmseg
    new_meta = dict(
        dataset_meta=classes,
        mmseg_version=mmseg.__version__,
        converted_from=dict(
            file=Path(source).name,
            mmseg_version=str(meta.get('mmseg_version', 'unknown')),
            config=str(meta.get('config', ''))))
    try:
        new_meta['cfg'] = cfg.pretty_text
    except Exception:  # formatting the text is a convenience only
        pass
    return dict(meta=new_meta, state_dict=weights), origin


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Convert IN to OUT; exit with ``error: ...`` when IN does not fit.

    Returns:
        dict: the checkpoint written.
    """
    args = parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists() and dst.resolve() == src.resolve():
        fail(f'OUT is IN ({src}); write the 1.x checkpoint to another file')
    if args.config and not Path(args.config).is_file():
        fail(f'config {args.config} does not exist')
    try:
        checkpoint = load_checkpoint_file(src, trust=args.trust_checkpoint)
        weights = segmentor_state_dict(checkpoint, str(src))
        config = Path(args.config) if args.config else find_config(
            weights, str(src))
        cfg = Config.fromfile(config)
        converted, origin = convert(checkpoint, weights, cfg, str(src))
    except CheckpointError as error:
        fail(str(error))
    not_written = save_checkpoint_file(converted, dst)
    classes = converted['meta']['dataset_meta']['classes']
    shown = ', '.join(classes[:3]) + (', ...' if len(classes) > 3 else '')
    dropped = sorted(set(checkpoint) - {'state_dict', 'meta'})
    written = ('state_dict (a safetensors file holds tensors only: '
               "meta.dataset_meta and meta.cfg are not written; mmseg's "
               'init_model then guesses the classes from num_classes)'
               if not_written else 'state_dict, meta.dataset_meta, meta.cfg')
    print(f'{src}: {len(weights)} tensors load strictly into the model of '
          f'{config}{"" if args.config else " (found by its keys)"}\n'
          f'classes from {origin}: {len(classes)} ({shown})\n'
          f'wrote {dst} ({dst.stat().st_size / 2**20:.1f} MiB): {written}; '
          f'dropped: {", ".join(dropped) or "nothing"}')
    return converted


if __name__ == '__main__':
    main()
