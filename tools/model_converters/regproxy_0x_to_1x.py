"""Convert a released mmseg 0.x RegionProxy checkpoint to the mmseg 1.x form.

    python tools/model_converters/regproxy_0x_to_1x.py IN OUT --config CONFIG

OUT holds IN's weights, checked to load strictly into CONFIG's model,
``meta.dataset_meta`` (plain ``classes`` and ``palette``) and ``meta.cfg``;
see docs/checkpoints.md.
"""
import argparse
from typing import Optional, Sequence

import mmseg
from mmengine.config import Config
from mmengine.runner.checkpoint import load_state_dict
from mmseg.apis import init_model

from regproxy.engine import (CheckpointError, load_checkpoint_file,
                             save_checkpoint_file)
from regproxy.utils import (add_trust_checkpoint_arg, config_errors, fail,
                            load_config)


def convert(checkpoint, cfg: Config, source: str) -> dict:
    """The 1.x form of ``checkpoint``.

    Raises:
        CheckpointError: no ``state_dict``, weights that do not load
            strictly into the config's model, or not one class name and one
            colour per class of the model.
    """
    weights = (checkpoint.get('state_dict')
               if isinstance(checkpoint, dict) else None)
    if not isinstance(weights, dict):
        raise CheckpointError(
            f"{source} has no 'state_dict'; expected an mmseg 0.x checkpoint "
            "{'state_dict': ..., 'meta': ...} (ImageNet ViT weights: "
            'tools/model_converters/vit2regproxy.py)')
    text = cfg.pretty_text  # before init_model edits cfg
    with config_errors(cfg, 'the model'):
        model = init_model(cfg, device='cpu')
    try:
        load_state_dict(model, weights, strict=True)
    except RuntimeError as error:  # mmengine lists keys and shapes
        raise CheckpointError(f'{source} does not fit the model of '
                              f'{cfg.filename}: {error}') from None
    meta = checkpoint.get('meta') or {}
    # 0.x files carry CLASSES and PALETTE, 1.x ones dataset_meta
    own = meta.get('dataset_meta') or dict(classes=meta.get('CLASSES'),
                                           palette=meta.get('PALETTE'))
    classes, palette = own.get('classes') or (), own.get('palette')
    num_classes = model.decode_head.num_classes
    colours = 0 if palette is None else len(palette)
    if not len(classes) == colours == num_classes:
        raise CheckpointError(
            f"{source}: the checkpoint's meta data has {len(classes)} class "
            f'names and {colours} colours for the {num_classes} classes of '
            'the model')
    # plain values: weights-only loading reads them without an allow-list
    own = dict(classes=tuple(str(c) for c in classes),
               palette=[[int(c) for c in rgb] for rgb in palette])
    meta = dict(dataset_meta=own, mmseg_version=mmseg.__version__, cfg=text)
    return dict(meta=meta, state_dict=weights)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Convert IN to OUT (``error: ...`` when IN does not fit); returns
    the checkpoint written."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', metavar='IN', help='mmseg 0.x checkpoint')
    parser.add_argument('dst', metavar='OUT', help='1.x checkpoint to write')
    parser.add_argument('--config', required=True,
                        help='1.x config of the model of IN')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    src, dst = args.src, args.dst
    if dst.endswith('.safetensors'):
        fail(f'OUT {dst}: a safetensors file holds tensors only, not the '
             'meta.dataset_meta that the 1.x form adds; write a .pth file')
    try:
        cfg = load_config(args.config)
        checkpoint = load_checkpoint_file(src, trust=args.trust_checkpoint)
        converted = convert(checkpoint, cfg, src)
    except CheckpointError as error:
        fail(str(error))
    save_checkpoint_file(converted, dst)
    classes = converted['meta']['dataset_meta']['classes']
    print(f'{src}: {len(converted["state_dict"])} tensors load strictly '
          f'into the model of {args.config}; {len(classes)} classes '
          f'({", ".join(classes[:3])}, ...); wrote {dst}')
    return converted


if __name__ == '__main__':
    main()
