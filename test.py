"""Test (evaluate) a RegionProxy checkpoint with mmengine's runner.

Single process::

    python test.py CONFIG CHECKPOINT [--aug-test] [--eval mIoU]

Several processes (GPUs, or CPU processes on gloo when there is no GPU)::

    torchrun --nproc_per_node=8 test.py CONFIG CHECKPOINT --launcher pytorch
    tools/dist_test.sh CONFIG CHECKPOINT 8

The original release's ``--config CONFIG --checkpoint CHECKPOINT`` and
``--options k=v`` spellings are accepted too. mmseg's ``IoUMetric`` logs the
per-class table and the mean metrics.
"""
import argparse
import os
import os.path as osp
import runpy
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

try:  # a broken install gets a diagnosis instead of a traceback
    import torch
    from mmengine.config import Config, DictAction
    from mmengine.device import get_device
    from mmengine.dist import barrier, is_main_process
    from mmengine.hooks import Hook
    from mmseg.datasets import CityscapesDataset
    from mmseg.registry import DATASETS

    from regproxy.datasets import (check_data_roots, leaf_datasets,
                                   use_checked_loaders)
    from regproxy.engine import (CheckpointError, WorkDirBusyError,
                                 WorkDirLock, unwrap_model)
    from regproxy.utils import (DTYPES, add_common_args, build_runner,
                                end_process_group, fail, load_config,
                                parse_with_paths, registered, set_work_dir,
                                setup_launcher)
except ImportError as error:
    sys.exit(runpy.run_path(str(Path(__file__).parent / 'tools' / 'misc' /
                                'check_env.py'))['stack_import_hint'](error))

# Why --compile is off by default, and what it does on the CPU.
CPU_COMPILE_NOTE = (
    'torch.compile gives no gain for inference on the CPU (measured 0.79x '
    'the eager speed, after 79 s of compilation, ViT-Ti/16 512x512 on a '
    '2-core EPYC): it is meant for GPUs, where CUDA graphs remove the '
    'per-kernel launch cost at batch 1')
IOU_METRICS = ('mIoU', 'mDice', 'mFscore')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): arguments; ``sys.argv[1:]`` if None.

    Returns:
        argparse.Namespace: the options, with ``config`` and ``checkpoint``
        resolved.
    """
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a RegionProxy segmentor')
    parser.add_argument(
        '--aug-test',
        '--tta',
        action='store_true',
        help="multi-scale + flip test: the config's tta_pipeline and "
        'tta_model')
    parser.add_argument(
        '--out',
        help='folder for the predicted label maps (one PNG each); refused '
        'when it holds files already, or while another run writes into it')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='let --out hold earlier files: PNGs of the same names are '
        'replaced, the others stay and are listed at the end')
    parser.add_argument(
        '--format-only',
        action='store_true',
        help='only write the predictions, one label-map PNG per image (for '
        'a test server, or a test set without labels), to --out (default '
        '<work_dir>/format_results); no label map is read. Cityscapes '
        'predictions are written as label ids, as its server expects')
    parser.add_argument(
        '--eval',
        nargs='+',
        choices=IOU_METRICS,
        help="metrics to compute (default: the config's)")
    parser.add_argument(
        '--eval-options',
        nargs='+',
        action=DictAction,
        help='extra test_evaluator arguments, e.g. nan_to_num=0')
    parser.add_argument(
        '--show', action='store_true', help='show the predictions')
    parser.add_argument(
        '--show-dir', help='folder for images painted with the predictions')
    parser.add_argument(
        '--opacity',
        type=float,
        help="opacity of the painted predictions in (0, 1] (default: the "
        "visualizer's)")
    parser.add_argument(
        '--wait-time',
        type=float,
        default=2,
        help='seconds each shown image stays (with --show)')
    parser.add_argument(
        '--gpu-collect',
        action='store_true',
        help='gather results across processes on the GPUs (CUDA runs only)')
    parser.add_argument(
        '--tmpdir', help='folder for gathering results on the CPU')
    parser.add_argument(
        '--dtype',
        choices=list(DTYPES),
        default='float32',
        help='inference precision (autocast); bfloat16 suits the CPU')
    parser.add_argument(
        '--compile',
        action='store_true',
        help="torch.compile(mode='reduce-overhead'): CUDA graphs remove the "
        'kernel launch cost of small models at batch 1 on GPUs; off by '
        'default (no gain on the CPU)')
    add_common_args(parser)
    args = parse_with_paths(
        parser, argv, config='config file', checkpoint='checkpoint file')
    if args.format_only and args.eval:
        parser.error('--eval and --format-only exclude each other')
    if args.out and args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out takes a folder: predictions are written as one '
                     'PNG label map per image, not as a pickle')
    if args.opacity is not None and not 0 < args.opacity <= 1:
        parser.error(f'--opacity must be in (0, 1], got {args.opacity}')
    return args


def enable_tta(cfg: Config) -> None:
    """Test with ``tta_pipeline`` and the model wrapped in ``tta_model``.

    Args:
        cfg (Config): config to update in place.
    """
    missing = [k for k in ('tta_pipeline', 'tta_model') if k not in cfg]
    if missing:
        fail(f'--aug-test needs {" and ".join(missing)} in the config')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def drop_labels(cfg: Config) -> List[str]:
    """List only the images of the test datasets (``--format-only``).

    mmseg's ``BaseSegDataset`` gives every image a label-map path when its
    ``data_prefix`` has a ``seg_map_path``, and ``CheckedLoadAnnotations``
    loads nothing for an image without one. With the key removed, a folder
    of images without labels (a benchmark's test split) is predicted as is,
    and ``check_data_roots`` no longer asks for the label folder, which it
    still does for every run that scores.

    Args:
        cfg (Config): config to update in place.

    Returns:
        list[str]: a note to log.
    """
    for dataset in leaf_datasets(cfg.test_dataloader.dataset):
        prefix = dict(dataset.get('data_prefix') or dict(img_path=''))
        prefix.pop('seg_map_path', None)
        dataset.data_prefix = prefix
    return ['--format-only: the test images are predicted without reading '
            'label maps.']


def reads_cityscapes(cfg: Config) -> bool:
    """Whether the test set is a ``CityscapesDataset`` (or a subclass)."""
    for dataset in leaf_datasets(cfg.test_dataloader.dataset):
        cls = registered(dataset['type'], DATASETS)
        if isinstance(cls, type) and issubclass(cls, CityscapesDataset):
            return True
    return False


def configure_evaluator(cfg: Config, args: argparse.Namespace) -> List[str]:
    """Apply the evaluation options to every metric of ``test_evaluator``.

    With ``--format-only`` on a Cityscapes test set, mmseg's
    ``CityscapesMetric`` replaces ``IoUMetric``: it writes label ids (its
    train ids mapped back by cityscapesscripts), as the Cityscapes server
    expects, where ``IoUMetric`` would write train ids.

    Args:
        cfg (Config): config to update in place.
        args (argparse.Namespace): parsed options; ``args.out`` is set to
            the folder the predictions go to (``--format-only``'s default
            included), which :func:`main` claims.

    Returns:
        list[str]: notes to log.
    """
    notes = []
    gpu_collect = args.gpu_collect and torch.cuda.is_available() and (
        args.launcher != 'none')
    if args.gpu_collect and not gpu_collect:
        notes.append('--gpu-collect ignored: not a distributed CUDA run, '
                     'results are gathered on the CPU.')
    out = args.out
    if args.format_only and out is None:
        out = osp.join(cfg.work_dir, 'format_results')
    if out is not None:
        notes.append(f'Predicted label maps go to {out}.')
    args.out = out
    evaluator = cfg.test_evaluator
    metrics = evaluator if isinstance(evaluator, list) else [evaluator]
    if args.format_only and reads_cityscapes(cfg):
        from mmseg.evaluation.metrics import citys_metric
        if citys_metric.CSLabels is None:
            fail('--format-only on Cityscapes writes label ids through '
                 "mmseg's CityscapesMetric, which needs cityscapesscripts: "
                 'pip install cityscapesscripts')
        metrics = [
            dict(type='CityscapesMetric') if m['type'] == 'IoUMetric' else m
            for m in metrics
        ]
        notes.append('Cityscapes: label ids are written (CityscapesMetric).')
    for metric in metrics:
        metric.update(args.eval_options or {})
        if gpu_collect:
            metric['collect_device'] = 'gpu'
        if metric['type'] not in ('IoUMetric', 'CityscapesMetric'):
            continue
        if out is not None:
            metric['output_dir'] = out
        if args.format_only:
            metric['format_only'] = True
        if metric['type'] == 'CityscapesMetric' and out is not None:
            metric['keep_results'] = True
        if metric['type'] == 'IoUMetric' and args.eval:
            metric['iou_metrics'] = args.eval
    cfg.test_evaluator = metrics if isinstance(evaluator, list) else (
        metrics[0])
    return notes


def claim_out(out: str, overwrite: bool) -> WorkDirLock:
    """Hold the ``--out`` folder for this run.

    Earlier predictions left in it would go unnoticed into a test-server
    zip, and two runs into one folder would mix their files: the folder's
    lock (:class:`WorkDirLock`) refuses a second live run, and a folder that
    holds files is refused unless ``overwrite``.

    Args:
        out (str): the folder; created if missing.
        overwrite (bool): ``--overwrite``.

    Returns:
        WorkDirLock: the lock, held; release it after the run.
    """
    os.makedirs(out, exist_ok=True)
    lock = WorkDirLock(out, 'predictions', '--out')
    try:
        lock.acquire()
    except WorkDirBusyError as err:
        fail(f'--out {out}: {err}')
    earlier = sorted(set(os.listdir(out)) - {osp.basename(lock.path)})
    if earlier and not overwrite:
        lock.release()
        fail(f'--out {out} holds {len(earlier)} file(s) already ('
             f'{", ".join(earlier[:3])}{", ..." * (len(earlier) > 3)}): '
             "earlier predictions would mix with this run's. Give an empty "
             'or new folder, or --overwrite to replace the PNGs of the same '
             'names and keep the others')
    return lock


def files_left(out: str, lock: WorkDirLock) -> List[str]:
    """The files in ``out`` older than its lock: not written by this run."""
    since = os.stat(lock.path).st_mtime_ns
    return sorted(
        name for name in os.listdir(out)
        if os.stat(osp.join(out, name)).st_mtime_ns < since)


class ThinImageCheck(Hook):
    """Stop at an image with a side of one pixel before ``IoUMetric``
    writes its prediction to ``--out``: mmseg 1.2.2 squeezes the label map
    there, so a 1x1 map fails with an ``IndexError`` and a 1xW one is
    written as a Wx1 PNG."""

    def before_test_iter(self, runner, batch_idx, data_batch=None):
        samples = data_batch['data_samples']
        if isinstance(samples[0], (list, tuple)):  # one list per view (TTA)
            samples = [sample for view in samples for sample in view]
        for sample in samples:
            height, width = sample.ori_shape
            if min(height, width) < 2:
                fail(f'{sample.img_path} is {height}x{width} pixels: --out '
                     "cannot write its prediction (mmseg's IoUMetric writes "
                     'a label map with a side of 1 pixel wrongly). Leave the '
                     'image out of the test set, or test without --out')


def enable_visualization(cfg: Config, args: argparse.Namespace) -> None:
    """Let ``SegVisualizationHook`` draw (and show or save) predictions.

    Args:
        cfg (Config): config to update in place.
        args (argparse.Namespace): parsed options.
    """
    hook = cfg.default_hooks.get('visualization') or dict(
        type='SegVisualizationHook')
    # The hook draws every interval-th image; a test draws them all.
    hook.update(draw=True, interval=1)
    if args.show:
        hook.update(show=True, wait_time=args.wait_time)
    cfg.default_hooks.visualization = hook
    if args.show_dir:
        cfg.visualizer.save_dir = args.show_dir


def prepare_config(args: argparse.Namespace) -> Tuple[Config, List[str]]:
    """The config with every command-line option applied.

    Args:
        args (argparse.Namespace): parsed options.

    Returns:
        tuple[Config, list[str]]: the config and notes to log.
    """
    notes = []
    cfg = load_config(args.config, args.cfg_options, notes=notes)
    set_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True
    if args.aug_test:
        enable_tta(cfg)
    if args.format_only:
        notes += drop_labels(cfg)
    notes += configure_evaluator(cfg, args) + set_precision(cfg, args.dtype)
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.opacity is not None:
        cfg.visualizer.alpha = args.opacity
    return cfg, notes


def set_precision(cfg: Config, dtype: str) -> List[str]:
    """Make the test loop autocast every step to ``dtype``.

    An autocast around ``runner.test()`` would have no effect: mmengine's
    ``TestLoop`` opens ``autocast(enabled=fp16)`` for each step, and a
    disabled autocast switches an outer one off. So the loop's own ``fp16``
    switch is turned on; it autocasts to bfloat16 on the CPU and to torch's
    default autocast dtype on a GPU, which :func:`main` sets.

    Args:
        cfg (Config): config to update in place.
        dtype (str): a key of :data:`regproxy.utils.DTYPES`.

    Returns:
        list[str]: a note to log, or nothing for float32.
    """
    if dtype == 'float32':
        return []
    if get_device() == 'cpu' and dtype != 'bfloat16':
        fail(f'--dtype {dtype} needs a GPU; on the CPU use bfloat16')
    cfg.test_cfg = dict(cfg.get('test_cfg') or dict(type='TestLoop'),
                        fp16=True)
    return [f'Inference under {dtype} autocast.']


def compile_inference(model: torch.nn.Module) -> None:
    """Compile the segmentor's backbone pass (``extract_feat``) and its
    head in place, with ``torch.compile(mode='reduce-overhead')``: inductor
    kernels replayed as CUDA graphs, one launch per pass on a GPU. Every
    inference path (``encode_decode``, ``predict`` in whole or slide mode)
    goes through both.

    Weights and their names are untouched. Compilation happens at the first
    call of each input shape; slide inference pads every window to the
    crop, so it compiles once. CUDA graphs reuse their output buffer on the
    next call, so the logits are copied out (test-time augmentation keeps
    several).

    Args:
        model (nn.Module): a segmentor, possibly wrapped (DDP, test-time
            augmentation).
    """
    segmentor = unwrap_model(model)
    features = torch.compile(segmentor.extract_feat, mode='reduce-overhead')
    head = torch.compile(segmentor.decode_head.forward,
                         mode='reduce-overhead')
    segmentor.extract_feat = lambda inputs: [
        f.clone() for f in features(inputs)]
    segmentor.decode_head.forward = lambda maps: head(maps).clone()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Test as the command line says.

    Args:
        argv (Sequence[str], optional): arguments; ``sys.argv[1:]`` if None.

    Returns:
        dict[str, float]: the metrics (empty with ``--format-only``).
    """
    args = parse_args(argv)
    # mmengine reads the local rank from the environment.
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    # a folder goes on: the reader names it and the checkpoints inside
    if '://' not in args.checkpoint and not osp.exists(args.checkpoint):
        fail(f'checkpoint {args.checkpoint} does not exist')
    cfg, notes = prepare_config(args)
    try:
        check_data_roots(cfg, ('test_dataloader', ))
    except FileNotFoundError as err:
        fail(str(err))
    use_checked_loaders(cfg, ('test_dataloader', ))
    notes += setup_launcher(cfg, args.launcher)
    runner = build_runner(cfg)
    if args.tmpdir:
        # IoUMetric takes no collect_dir argument; set it on the built metric.
        for metric in runner.test_loop.evaluator.metrics:
            metric.collect_dir = args.tmpdir
    for note in notes:
        runner.logger.info(note)
    if args.compile:
        compile_inference(runner.model)
        if get_device() == 'cpu':
            runner.logger.warning(f'--compile: {CPU_COMPILE_NOTE}.')
    if args.dtype != 'float32' and get_device() != 'cpu':
        torch.set_autocast_dtype(get_device(), DTYPES[args.dtype])
    lock = None
    if args.out is not None:
        runner.register_hook(ThinImageCheck())
        if is_main_process():
            lock = claim_out(args.out, args.overwrite)
        barrier()  # no rank writes before the folder is claimed
    try:
        metrics = runner.test()
    except CheckpointError as err:
        fail(str(err))
    finally:
        if lock is not None:
            left = files_left(args.out, lock)
            lock.release()
    if lock is not None and left:
        runner.logger.warning(
            f'--overwrite: {len(left)} earlier file(s) in {args.out} were '
            f'not written by this run and stay: {", ".join(left[:10])}'
            f'{", ..." * (len(left) > 10)}')
    return metrics


if __name__ == '__main__':
    main()
    end_process_group()  # after the runner is gone
