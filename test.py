"""Test (evaluate) a RegionProxy checkpoint: mmseg's ``tools/test.py`` with
the original release's flags and ours (see the README's "Train and test",
docs/datasets.md#test-sets-without-labels and docs/speed.md)."""
import argparse
import os.path as osp
import runpy
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

try:  # a broken install gets a diagnosis instead of a traceback
    import torch
    from mmengine.config import Config
    from mmengine.device import get_device
    from mmengine.utils import mkdir_or_exist
    from mmseg.datasets import CityscapesDataset
    from mmseg.registry import DATASETS, MODELS

    from regproxy.datasets import (DataError, check_data_roots,
                                   leaf_datasets, use_checked_loaders)
    from regproxy.engine import CheckpointError, unwrap_model
    from regproxy.models import PaddedSlideEncoderDecoder
    from regproxy.utils import (DTYPES, add_common_args, build_runner,
                                end_process_group, error_text, fail,
                                load_script_config, parse_with_paths,
                                setup_launcher)
except ImportError as error:
    sys.exit(runpy.run_path(str(Path(__file__).parent / 'tools' / 'misc' /
                                'check_env.py'))['stack_import_hint'](error))

# Why --compile is off by default, and what it does on the CPU.
CPU_COMPILE_NOTE = (
    'torch.compile gives no gain for inference on the CPU (measured 0.79x '
    'the eager speed after 79 s of compilation, ViT-Ti/16 512x512, 2-core '
    'EPYC): on GPUs, CUDA graphs remove the kernel launch cost at batch 1')
# mmseg's metrics that read the class maps (pred_sem_seg) only, not the
# logits, and write label maps (output_dir, format_only).
LABEL_MAP_METRICS = ('IoUMetric', 'CityscapesMetric')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` if ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a RegionProxy segmentor')
    parser.add_argument(
        '--aug-test',
        '--tta',
        action='store_true',
        help="multi-scale + flip test (the config's tta_pipeline, tta_model)")
    parser.add_argument(
        '--out', help='folder for the predicted label maps (one PNG each)')
    parser.add_argument(
        '--format-only',
        action='store_true',
        help='only write the label maps (a test set without labels) to '
        '--out (default <work_dir>/format_results); Cityscapes label ids')
    parser.add_argument(
        '--eval',
        nargs='+',
        choices=('mIoU', 'mDice', 'mFscore'),
        help="metrics to compute (default: the config's)")
    parser.add_argument(
        '--show', action='store_true', help='show the predictions')
    parser.add_argument(
        '--show-dir', help='folder for images painted with the predictions')
    parser.add_argument(
        '--opacity', type=float, help='of the painted predictions, in (0, 1]')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='seconds per shown image')
    parser.add_argument(
        '--dtype',
        choices=list(DTYPES),
        default='float32',
        help='inference precision (autocast); bfloat16 suits the CPU')
    parser.add_argument(
        '--compile',
        action='store_true',
        help="torch.compile(mode='reduce-overhead'), for GPUs (no gain on "
        'the CPU)')
    add_common_args(parser)
    args = parse_with_paths(
        parser, argv, config='config file', checkpoint='checkpoint file')
    if args.opacity is not None and not 0 < args.opacity <= 1:
        parser.error(f'--opacity must be in (0, 1], got {args.opacity}')
    return args


def prepare_config(args: argparse.Namespace) -> Tuple[Config, List[str]]:
    """The config with every command-line option applied, and notes to
    log; ``args.out`` becomes the folder the label maps go to
    (``--format-only``'s default included)."""
    cfg, notes = load_script_config(args)
    cfg.load_from = args.checkpoint
    if args.aug_test:
        missing = [k for k in ('tta_pipeline', 'tta_model') if k not in cfg]
        if missing:
            fail(f'--aug-test needs {" and ".join(missing)} in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.format_only:
        enable_format_only(cfg)
        args.out = args.out or osp.join(cfg.work_dir, 'format_results')
    for metric in metrics_of(cfg):
        if metric['type'] in LABEL_MAP_METRICS and args.out:
            metric['output_dir'] = args.out
        if metric['type'] in LABEL_MAP_METRICS and args.format_only:
            metric.update(format_only=True, keep_results=True)
        if metric['type'] == 'IoUMetric' and args.eval:
            metric['iou_metrics'] = args.eval
    if args.show or args.show_dir:
        # SegVisualizationHook draws every interval-th image; here all.
        hook = cfg.default_hooks.get('visualization') or dict(
            type='SegVisualizationHook')
        hook.update(draw=True, interval=1, show=args.show,
                    wait_time=args.wait_time)
        cfg.default_hooks.visualization = hook
        if args.show_dir:
            cfg.visualizer.save_dir = args.show_dir
    if args.opacity is not None:
        cfg.visualizer.alpha = args.opacity
    if args.dtype != 'float32':
        # mmengine's TestLoop opens autocast(enabled=fp16) for each step,
        # which switches an outer autocast off: its fp16 switch autocasts
        # to bfloat16 on the CPU, to torch's autocast dtype elsewhere.
        if get_device() == 'cpu' and args.dtype != 'bfloat16':
            fail(f'--dtype {args.dtype} needs a GPU; on the CPU use bfloat16')
        cfg.test_cfg = dict(cfg.get('test_cfg') or dict(type='TestLoop'),
                            fp16=True)
        notes.append(f'Inference under {args.dtype} autocast.')
    return cfg, notes + class_maps_only(cfg)


def enable_format_only(cfg: Config) -> None:
    """Predict the test images without label maps (``--format-only``): no
    ``seg_map_path`` in ``data_prefix``, for which mmseg's
    ``BaseSegDataset`` would name a label map per image; Cityscapes label
    ids through mmseg's ``CityscapesMetric`` (``IoUMetric``: train ids)."""
    for dataset in leaf_datasets(cfg.test_dataloader.dataset):
        prefix = dict(dataset.get('data_prefix') or dict(img_path=''))
        prefix.pop('seg_map_path', None)
        dataset.data_prefix = prefix
        cls = DATASETS.get(dataset['type'])
        if isinstance(cls, type) and issubclass(cls, CityscapesDataset):
            cfg.test_evaluator = dict(type='CityscapesMetric')


def metrics_of(cfg: Config) -> List[dict]:
    """The metric dicts of ``cfg.test_evaluator`` (one or a list)."""
    evaluator = cfg.test_evaluator
    return evaluator if isinstance(evaluator, list) else [evaluator]


def class_maps_only(cfg: Config) -> List[str]:
    """Predict class maps without the (K, H, W) logits where nothing reads
    them (``PaddedSlideEncoderDecoder``'s ``return_logits=False``): the
    metrics of :data:`LABEL_MAP_METRICS`, ``--out`` and the visualizer read
    ``pred_sem_seg`` alone; TTA (another model type) averages logits.
    Returns a note, if any."""
    cls = MODELS.get(cfg.model.type)
    test_cfg = cfg.model.get('test_cfg') or {}
    if (not isinstance(cls, type)
            or not issubclass(cls, PaddedSlideEncoderDecoder)
            or 'return_logits' in test_cfg
            or cfg.model.decode_head.get('out_channels') == 1
            or any(m['type'] not in LABEL_MAP_METRICS
                   for m in metrics_of(cfg))):
        return []
    cfg.model.test_cfg = dict(test_cfg, return_logits=False)
    return ['Class maps only (model.test_cfg.return_logits=False): nothing '
            'reads the logits.']


def compile_inference(model: torch.nn.Module) -> None:
    """Compile in place the backbone pass (``extract_feat``) and the head,
    which every inference path runs, of a segmentor (possibly wrapped),
    with CUDA graphs on GPUs; their reused output buffers are copied."""
    segmentor = unwrap_model(model)
    features = torch.compile(segmentor.extract_feat, mode='reduce-overhead')
    head = torch.compile(segmentor.decode_head.forward,
                         mode='reduce-overhead')
    segmentor.extract_feat = lambda inputs: [
        f.clone() for f in features(inputs)]
    segmentor.decode_head.forward = lambda maps: head(maps).clone()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Test as the command line ``argv`` says; returns the metrics (none
    with ``--format-only``)."""
    args = parse_args(argv)
    cfg, notes = prepare_config(args)
    try:
        check_data_roots(cfg, ('test_dataloader', ))
        notes += setup_launcher(cfg, args.launcher)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    use_checked_loaders(cfg, ('test_dataloader', ))
    if args.out:
        # mmseg 1.2.2's metrics create it in the main process alone, when
        # built: another process may write its first label map before.
        try:
            mkdir_or_exist(args.out)
        except OSError as err:
            fail(f'--out {args.out}: cannot make this folder ({err})')
    runner = build_runner(cfg, notes)
    if args.compile:
        compile_inference(runner.model)
        if get_device() == 'cpu':
            runner.logger.warning(f'--compile: {CPU_COMPILE_NOTE}.')
    if args.dtype != 'float32' and get_device() != 'cpu':
        torch.set_autocast_dtype(get_device(), DTYPES[args.dtype])
    try:  # ImportError: mmseg's CityscapesMetric without cityscapesscripts
        return runner.test()
    except (CheckpointError, DataError, ImportError) as err:
        fail(error_text(err))


if __name__ == '__main__':
    main()
    end_process_group()  # after the runner is gone
