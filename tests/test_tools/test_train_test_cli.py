"""train.py and test.py end to end on a tiny model and a tiny shapes set.

Single-process runs call the scripts' ``main`` in this process; the
distributed ones start two CPU processes (gloo) with torchrun and with
``python -m torch.distributed.launch``.
"""
import itertools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.apis import MMSegInferencer, inference_model, init_model

from regproxy.datasets import ShapesDataset, generate_shapes_dataset
from regproxy.utils import load_config
from tests.test_engine.test_checkpoint import WritesMarker
from tests.test_engine.test_work_dir_lock import hold_lock
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / 'configs' / '_base_'

TINY_CONFIG = """
_base_ = [
    '{base}/models/regproxy_vit-b16.py', '{base}/datasets/shapes.py',
    '{base}/default_runtime.py', '{base}/schedules/adamw.py'
]
crop_size = (64, 64)
# The base's SyncBN norm_cfg stays: one process needs no group, and in CPU
# process groups RegProxyRunner.wrap_model turns it into BN.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=crop_size, embed_dims=32, num_layers=2, num_heads=2,
        out_indices=(0, 1), drop_path_rate=0.),
    decode_head=dict(in_channels=(32, 32), channels=32, num_classes=8),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(48, 48)))
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', num_classes=8),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(1.0, 1.5),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='CheckedLoadAnnotations', num_classes=8),
    dict(type='PackSegInputs')
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(96, 48), keep_ratio=True),
         dict(type='Resize', scale=(128, 64), keep_ratio=True)],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='CheckedLoadAnnotations', num_classes=8)],
        [dict(type='PackSegInputs')]])
]
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(
    batch_size=2, **loader,
    dataset=dict(data_root='{data}', pipeline=train_pipeline))
val_dataloader = dict(
    **loader, dataset=dict(data_root='{data}', pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='ConstantLR', factor=1., by_epoch=False)]
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=5))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
"""


train_script = load_script('train.py')
test_script = load_script('test.py')

_run_ids = itertools.count()


def _unique_names() -> list:
    """Options that give a run its own logger and visualizer.

    mmengine keeps one logger per experiment name (config name and start
    second) and one visualizer per name ('visualizer' in the config): runs in
    one process would otherwise write into the first run's work dir.
    """
    run = next(_run_ids)
    return [
        '--cfg-options', f'experiment_name=run{run}',
        f'visualizer.name=visualizer{run}'
    ]


def _train(*argv: str) -> None:
    """``train.py`` in this process."""
    train_script.main([*argv, *_unique_names()])


def _test(*argv: str) -> dict:
    """``test.py`` in this process; returns the metrics."""
    return test_script.main([*argv, *_unique_names()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(args, timeout=240) -> str:
    """Run a command in the repository root; fail with its output."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, *args],
                          cwd=REPO,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


def cv2_shape(path: Path) -> tuple:
    return cv2.imread(str(path)).shape[:2]


def _json_lines(work_dir: Path, pattern: str) -> list:
    lines = []
    for path in sorted(work_dir.glob(pattern)):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def _test_metrics(work_dir: Path) -> dict:
    """The metrics that mmengine's LoggerHook wrote after testing."""
    records = [r for r in _json_lines(work_dir, '*/*.json') if 'mIoU' in r]
    assert len(records) == 1, records
    return records[0]


def _losses(work_dir: Path) -> list:
    return [
        r['loss'] for r in _json_lines(work_dir, '*/vis_data/scalars.json')
        if 'loss' in r
    ]


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory) -> Path:
    """A tiny RegionProxy config on 4 + 3 generated shapes images."""
    root = tmp_path_factory.mktemp('tiny')
    data = generate_shapes_dataset(
        str(root / 'shapes'), num_train=4, num_val=3)
    path = root / 'tiny_regproxy.py'
    path.write_text(TINY_CONFIG.format(base=BASE, data=data))
    return path


@pytest.fixture(scope='module')
def trained(tiny_config, tmp_path_factory) -> Path:
    """Work dir of a 4-iteration single-process training."""
    work_dir = tmp_path_factory.mktemp('train')
    _train(str(tiny_config), '--work-dir', str(work_dir))
    return work_dir


@pytest.fixture(scope='module')
def single_test(tiny_config, trained, tmp_path_factory) -> tuple:
    """Single-process test of the trained checkpoint: the metrics and the
    folder of predicted label maps."""
    work_dir = tmp_path_factory.mktemp('test')
    metrics = _test(
        str(tiny_config), str(trained / 'iter_4.pth'), '--work-dir',
        str(work_dir), '--out', str(work_dir / 'preds'))
    return metrics, work_dir / 'preds'


# Command line -----------------------------------------------------------


@pytest.mark.parametrize('flag', ['--local_rank', '--local-rank'])
def test_local_rank_spellings(flag):
    args = train_script.parse_args(['cfg.py', f'{flag}=3'])
    assert args.local_rank == 3
    args = test_script.parse_args(['cfg.py', 'ckpt.pth', flag, '2'])
    assert args.local_rank == 2


def test_options_and_cfg_options_merge(tmp_path):
    path = tmp_path / 'plain.py'
    path.write_text('a = 1\nb = dict(c=2, d=3)\n')
    args = train_script.parse_args([
        str(path), '--options', 'a=5', 'b.c=6', '--cfg-options', 'b.c=7',
        'b.d=8'
    ])
    cfg = load_config(args.config, args.cfg_options)
    assert (cfg.a, cfg.b.c, cfg.b.d) == (5, 7, 8)


@pytest.mark.parametrize('argv', [
    ['c.py', 'k.pth'],
    ['--config', 'c.py', '--checkpoint', 'k.pth'],
    ['--checkpoint', 'k.pth', '--config', 'c.py'],
    ['--config', 'c.py', 'k.pth'],
    ['c.py', '--checkpoint', 'k.pth'],
])
def test_config_and_checkpoint_spellings(argv):
    args = test_script.parse_args(argv + ['--launcher', 'pytorch'])
    assert (args.config, args.checkpoint) == ('c.py', 'k.pth')
    assert args.launcher == 'pytorch'


def test_config_spellings_of_train():
    assert train_script.parse_args(['--config', 'c.py']).config == 'c.py'
    assert train_script.parse_args(['c.py']).config == 'c.py'


@pytest.mark.parametrize('argv', [
    [],
    ['c.py'],
    ['c.py', 'k.pth', 'extra.pth'],
    ['c.py', 'k.pth', '--opacity', '1.5'],
])
def test_test_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        test_script.parse_args(argv)


def test_gpus_is_not_an_option(capsys):
    """The original release's --gpus was accepted and ignored: the number of
    processes is the launcher's."""
    with pytest.raises(SystemExit) as exit:
        train_script.parse_args(['c.py', '--gpus', '2'])
    assert exit.value.code == 2
    assert 'unrecognized arguments: --gpus 2' in capsys.readouterr().err


def test_train_rejects_two_resume_sources():
    with pytest.raises(SystemExit):
        train_script.parse_args(['c.py', '--resume', '--resume-from', 'x'])


# Missing data -----------------------------------------------------------


def test_scripts_exit_with_the_message(tiny_config, tmp_path):
    missing = tmp_path / 'missing'
    with pytest.raises(SystemExit) as err:
        train_script.main([
            str(tiny_config), '--work-dir',
            str(tmp_path), '--cfg-options',
            'train_dataloader.dataset.type=BaseSegDataset',
            f'train_dataloader.dataset.data_root={missing}'
        ])
    assert str(missing) in str(err.value)
    with pytest.raises(SystemExit) as err:
        # Any existing file passes the checkpoint check made first.
        test_script.main([
            str(tiny_config),
            str(tiny_config), '--work-dir',
            str(tmp_path), '--cfg-options',
            'test_dataloader.dataset.type=BaseSegDataset',
            f'test_dataloader.dataset.data_root={missing}'
        ])
    assert 'test_dataloader' in str(err.value)
    assert str(missing) in str(err.value)


# Config edits (no runner) ----------------------------------------------


def _train_cfg(*argv: str):
    return train_script.prepare_config(train_script.parse_args(argv))


def _test_cfg(*argv: str):
    return test_script.prepare_config(test_script.parse_args(argv))


def test_train_flags_edit_the_config(tiny_config, tmp_path):
    cfg, notes = _train_cfg(str(tiny_config))
    assert cfg.work_dir == './work_dirs/tiny_regproxy'
    cfg, notes = _train_cfg(
        str(tiny_config), '--work-dir', str(tmp_path), '--resume-from',
        'x.pth', '--no-validate', '--seed', '3', '--deterministic', '--amp')
    assert cfg.work_dir == str(tmp_path)
    assert (cfg.load_from, cfg.resume) == ('x.pth', True)
    assert cfg.val_dataloader is None and cfg.val_evaluator is None
    assert cfg.randomness == dict(seed=3, deterministic=True)
    assert cfg.optim_wrapper.type in ('AmpOptimWrapper',
                                      'AutocastOptimWrapper')
    cfg, _ = _train_cfg(
        str(tiny_config), '--resume', '--cfg-options', 'load_from=init.pth')
    assert (cfg.load_from, cfg.resume) == (None, True)
    cfg, _ = _train_cfg(str(tiny_config), '--load-from', 'init.pth')
    assert (cfg.load_from, cfg.resume) == ('init.pth', False)


def test_test_flags_edit_the_config(tiny_config, tmp_path):
    cfg, notes = _test_cfg(
        str(tiny_config), 'k.pth', '--aug-test', '--eval',
        'mIoU', 'mFscore', '--show-dir', str(tmp_path), '--opacity', '0.3',
        '--work-dir', str(tmp_path))
    assert cfg.load_from == 'k.pth'
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.type == 'PaddedSlideEncoderDecoder'
    # test-time augmentation averages the logits: they stay
    assert 'return_logits' not in cfg.model.module.test_cfg
    assert cfg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'
    evaluator = cfg.test_evaluator
    assert evaluator.iou_metrics == ['mIoU', 'mFscore']
    assert cfg.default_hooks.visualization.draw
    assert cfg.visualizer.save_dir == str(tmp_path)
    assert cfg.visualizer.alpha == 0.3
    cfg, _ = _test_cfg(
        str(tiny_config), 'k.pth', '--format-only', '--work-dir',
        str(tmp_path))
    assert cfg.test_evaluator.format_only
    assert cfg.test_evaluator.output_dir == str(tmp_path / 'format_results')


@pytest.mark.parametrize('argv, logits', [
    ([], False),
    (['--out', 'preds', '--show-dir', 'vis'], False),
    (['--format-only'], False),
    (['--aug-test'], None),
    (['--cfg-options', 'model.test_cfg.return_logits=True'], True),
    (['--cfg-options', "test_evaluator.type=DepthMetric"], None),
])
def test_class_maps_only_where_nothing_reads_the_logits(tiny_config, argv,
                                                        logits):
    """IoUMetric, --out and the visualizer read pred_sem_seg alone."""
    cfg, notes = _test_cfg(str(tiny_config), 'k.pth', *argv)
    test_cfg = cfg.model.get('module', cfg.model).test_cfg
    assert test_cfg.get('return_logits') is logits
    note = ('Class maps only (model.test_cfg.return_logits=False): nothing '
            'reads the logits.')
    assert (note in notes) == (logits is False)


# Single process ---------------------------------------------------------


def test_train_writes_checkpoints_and_finite_losses(trained):
    assert (trained / 'iter_2.pth').is_file()
    assert (trained / 'iter_4.pth').is_file()
    losses = _losses(trained)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


def test_resume_continues_from_latest(tiny_config, trained):
    _train(
        str(tiny_config), '--work-dir', str(trained), '--resume',
        '--no-validate', '--cfg-options', 'train_cfg.max_iters=6')
    assert (trained / 'iter_6.pth').is_file()
    # The resumed run logged iterations 5 and 6 only.
    assert len(_losses(trained)) == 6


def test_test_reports_miou_and_writes_predictions(single_test):
    metrics, preds = single_test
    assert 0 <= metrics['mIoU'] <= 100 and 'aAcc' in metrics
    assert len(list(preds.glob('*.png'))) == 3


def test_class_maps_only_give_the_metrics_of_the_logits(
        tiny_config, trained, single_test, tmp_path):
    """single_test predicted class maps only (return_logits=False)."""
    metrics = _test(str(tiny_config), str(trained / 'iter_4.pth'),
                    '--work-dir', str(tmp_path), '--cfg-options',
                    'model.test_cfg.return_logits=True')
    assert metrics == single_test[0]


def test_aug_test(tiny_config, trained, tmp_path, capsys):
    metrics = _test(
        str(tiny_config), str(trained / 'iter_4.pth'), '--aug-test', '--eval',
        'mIoU', 'mDice', '--work-dir', str(tmp_path), '--dtype', 'bfloat16',
        '--show-dir', str(tmp_path / 'show'))
    assert {'mIoU', 'mDice'} <= set(metrics)
    assert len(list((tmp_path / 'show').rglob('*.png'))) == 3
    # IoUMetric's per-class table reaches the log.
    assert 'per class results' in capsys.readouterr().out


def test_dtype_autocasts_every_step(tiny_config, trained, tmp_path,
                                    monkeypatch):
    """--dtype bfloat16 reaches the model through mmengine's test loop,
    whose per-step autocast would switch off one opened around it."""
    import torch

    from regproxy.models import PaddedSlideEncoderDecoder
    seen = []
    extract_feat = PaddedSlideEncoderDecoder.extract_feat

    def recording(self, *args, **kwargs):
        seen.append((torch.is_autocast_enabled('cpu'),
                     torch.get_autocast_dtype('cpu')))
        return extract_feat(self, *args, **kwargs)

    # every slide window goes through extract_feat
    monkeypatch.setattr(PaddedSlideEncoderDecoder, 'extract_feat', recording)
    _test(str(tiny_config), str(trained / 'iter_4.pth'), '--work-dir',
          str(tmp_path), '--dtype', 'bfloat16')
    assert len(seen) >= 3 and set(seen) == {(True, torch.bfloat16)}


def test_float16_needs_a_gpu(tiny_config, trained, tmp_path):
    with pytest.raises(SystemExit, match='needs a GPU; on the CPU use bf'):
        _test(str(tiny_config), str(trained / 'iter_4.pth'), '--work-dir',
              str(tmp_path), '--dtype', 'float16')


def test_no_workers_and_custom_imports_as_a_list(tiny_config, tmp_path):
    """The usual debugging setting num_workers=0 on loaders with persistent
    workers, in a config that names its imports as a plain list."""
    config = tmp_path / 'workers.py'
    config.write_text(
        f"_base_ = ['{tiny_config}']\n"
        "custom_imports = ['regproxy']\n"
        "loader = dict(num_workers=2, persistent_workers=True)\n"
        "train_dataloader = dict(**loader)\n"
        "val_dataloader = dict(**loader)\n"
        "test_dataloader = val_dataloader\n")
    _train(str(config), '--work-dir', str(tmp_path), '--cfg-options',
           'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
           'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0')
    log = ''.join(p.read_text() for p in tmp_path.glob('*/*.log'))
    assert ('train_dataloader.num_workers=0: persistent_workers set to '
            'False') in log
    assert len(_losses(tmp_path)) == 2
    metrics = _test(str(config), str(tmp_path / 'iter_2.pth'), '--work-dir',
                    str(tmp_path / 'test'), '--cfg-options',
                    'test_dataloader.num_workers=0')
    assert 0 <= metrics['mIoU'] <= 100


def test_amp_on_cpu(tiny_config, tmp_path):
    _train(
        str(tiny_config), '--work-dir', str(tmp_path), '--amp',
        '--no-validate', '--cfg-options', 'train_cfg.max_iters=2')
    losses = _losses(tmp_path)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


# Two CPU processes ------------------------------------------------------


@pytest.mark.slow
def test_torchrun_train(tiny_config, tmp_path):
    output = _run([
        '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
        'train.py',
        str(tiny_config), '--launcher', 'pytorch', '--work-dir',
        str(tmp_path), '--no-validate', '--cfg-options',
        'default_hooks.checkpoint.interval=4'
    ])
    assert 'distributed run on the CPU with gloo (world size 2)' in output
    # Rank 0 alone saves: one complete checkpoint.
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_4.pth']
    assert output.count('Saving checkpoint at 4 iterations') == 1
    losses = _losses(tmp_path)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


@pytest.mark.slow
def test_distributed_launch_test_matches_single_process(
        tiny_config, trained, single_test, tmp_path):
    single_metrics, single_preds = single_test
    # torch.distributed.launch passes --local-rank=K to each process.
    _run([
        '-m', 'torch.distributed.launch', '--nproc_per_node=2',
        f'--master_port={_free_port()}', 'test.py',
        str(tiny_config),
        str(trained / 'iter_4.pth'), '--launcher', 'pytorch', '--work-dir',
        str(tmp_path), '--out',
        str(tmp_path / 'preds')
    ])
    metrics = _test_metrics(tmp_path)
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert metrics[key] == single_metrics[key]
    for single in sorted(single_preds.glob('*.png')):
        assert (tmp_path / 'preds' / single.name).read_bytes() == \
            single.read_bytes()


# Kill and resume -----------------------------------------------------------


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tiny_config, tmp_path):
    """SIGKILL after the first checkpoint, then ``--resume``: the final
    weights equal an uninterrupted run's (deterministic, CPU, drop path on,
    augmentation in a dataloader worker)."""
    import signal
    import time

    def command(work_dir, max_iters):
        return [
            'train.py',
            str(tiny_config), '--work-dir',
            str(work_dir), '--deterministic', '--seed', '0',
            '--cfg-options', f'train_cfg.max_iters={max_iters}',
            'train_cfg.val_interval=1000', 'train_dataloader.num_workers=1',
            'model.backbone.drop_path_rate=0.2'
        ]

    full = tmp_path / 'full'
    _run(command(full, 6))
    killed = tmp_path / 'killed'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    # The first run would go on for 1000 iterations: it is surely killed.
    proc = subprocess.Popen([sys.executable, *command(killed, 1000)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (killed / 'last_checkpoint').exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / 'iter_6.pth').exists()
    _run(command(killed, 6) + ['--resume'])
    expected = torch.load(full / 'iter_6.pth', weights_only=True)
    resumed = torch.load(killed / 'iter_6.pth', weights_only=True)
    assert resumed['meta']['iter'] == 6
    for key, value in expected['state_dict'].items():
        diff = (resumed['state_dict'][key].double() - value.double()).abs()
        assert diff.max() <= 1e-6, key


# Diverging runs ------------------------------------------------------------

# AdamW moves every weight by about the learning rate in its first step: at
# 1e30 the second forward pass overflows.
DIVERGE = ['optim_wrapper.optimizer.lr=1e30', 'train_cfg.max_iters=6',
           'default_hooks.checkpoint.interval=1']


def test_non_finite_loss_stops_and_keeps_last_checkpoint(
        tiny_config, tmp_path):
    with pytest.raises(SystemExit, match='at iteration 2: training'):
        _train(str(tiny_config), '--work-dir', str(tmp_path),
               '--no-validate', '--cfg-options', *DIVERGE)
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_1.pth']
    assert (tmp_path / 'last_checkpoint').read_text().endswith('iter_1.pth')


@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['torch.distributed.run',
                                      'torch.distributed.launch'])
def test_dying_rank_ends_the_job(tiny_config, tmp_path, launcher):
    """Rank 1 is SIGKILLed at iteration 2 while rank 0 waits for it in the
    gradient all-reduce: the launcher ends the job at once, naming the
    rank and the signal."""
    import time
    config = tmp_path / 'kill_rank_1.py'
    config.write_text(
        f"_base_ = ['{tiny_config}']\n"
        "custom_imports = dict(imports=['regproxy', 'tests.fault_injection'],"
        " allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='KillRankHook', rank=1, iteration=2)]\n"
        "train_cfg = dict(max_iters=1000)\n")
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run([
        sys.executable, '-m', launcher, '--nproc_per_node=2',
        f'--master_port={_free_port()}', 'train.py',
        str(config), '--launcher', 'pytorch', '--work-dir',
        str(tmp_path / 'work'), '--no-validate'
    ], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    took = time.time() - float((tmp_path / 'work' / 'killed_at').read_text())
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'rank      : 1' in output and 'Signal 9 (SIGKILL)' in output, \
        output[-3000:]
    print(f'{launcher}: ended {took:.1f} s after the kill')
    assert took < 60


# Safe loading and resuming -------------------------------------------------


def _crafted_copy(checkpoint: Path, path: Path, marker: Path) -> Path:
    """``checkpoint`` with an object in its meta that creates ``marker``
    when unpickled."""
    content = torch.load(checkpoint, weights_only=True)
    content['meta']['note'] = WritesMarker(marker)
    torch.save(content, path)
    return path


def test_crafted_checkpoint_is_refused_by_train_and_test(
        tiny_config, trained, tmp_path):
    marker = tmp_path / 'marker'
    crafted = _crafted_copy(trained / 'iter_4.pth', tmp_path / 'dl.pth',
                            marker)
    for main, argv in [
        (train_script.main, [str(tiny_config), '--load-from', str(crafted)]),
        (train_script.main, [str(tiny_config), '--resume-from',
                             str(crafted)]),
        (test_script.main, [str(tiny_config), str(crafted)]),
    ]:
        with pytest.raises(SystemExit) as err:
            main([*argv, '--work-dir', str(tmp_path / 'work'),
                  *_unique_names()])
        assert 'dl.pth' in str(err.value)
        assert 'io.open' in str(err.value)
        assert '--trust-checkpoint' in str(err.value)
        assert not marker.exists()
    _test(str(tiny_config), str(crafted), '--trust-checkpoint',
          '--work-dir', str(tmp_path / 'work'))
    assert marker.exists()


def _work_dir_with(tmp_path: Path, trained: Path, names) -> Path:
    """A work dir holding copies of ``trained``'s checkpoints ``names``
    and a ``last_checkpoint`` that points to another place."""
    work = tmp_path / 'copied'
    work.mkdir()
    for name in names:
        shutil.copy(trained / name, work / name)
    (work / 'last_checkpoint').write_text('/elsewhere/iter_4.pth')
    return work


def test_resume_uses_the_work_dirs_own_newest_checkpoint(
        tiny_config, trained, tmp_path):
    work = _work_dir_with(tmp_path, trained, ['iter_2.pth', 'iter_4.pth'])
    _train(str(tiny_config), '--work-dir', str(work), '--resume',
           '--no-validate', '--cfg-options', 'train_cfg.max_iters=6')
    assert len(_losses(work)) == 2  # iterations 5 and 6


def test_resume_skips_unreadable_and_never_starts_over_checkpoints(
        tiny_config, trained, tmp_path, caplog):
    work = _work_dir_with(tmp_path, trained, ['iter_2.pth', 'iter_4.pth'])
    (work / 'last_checkpoint').unlink()
    (work / 'iter_4.pth').write_bytes(b'truncated')
    _train(str(tiny_config), '--work-dir', str(work), '--resume',
           '--no-validate', '--cfg-options', 'train_cfg.max_iters=4')
    assert len(_losses(work)) == 2  # iterations 3 and 4, from iter_2
    for name in ('iter_2.pth', 'iter_4.pth'):
        (work / name).write_bytes(b'truncated')
    with pytest.raises(SystemExit) as err:
        _train(str(tiny_config), '--work-dir', str(work), '--resume',
               '--no-validate')
    assert 'none of the checkpoints' in str(err.value)
    assert (work / 'iter_4.pth').read_bytes() == b'truncated'


def test_written_checkpoints_open_in_mmseg_apis(tiny_config, trained,
                                                tmp_path):
    """Training checkpoints load with torch.load(weights_only=True) alone,
    so mmseg's init_model and MMSegInferencer read them unchanged."""
    cfg = str(tiny_config)
    opts = {'model.decode_head.norm_cfg.type': 'BN'}
    model = init_model(cfg, str(trained / 'iter_4.pth'), device='cpu',
                       cfg_options=opts)
    assert model.dataset_meta['classes'] == ShapesDataset.METAINFO['classes']
    image = sorted((Path(
        Config.fromfile(cfg).test_dataloader.dataset.data_root) /
        'images' / 'validation').glob('*.jpg'))[0]
    result = inference_model(model, str(image))
    assert result.pred_sem_seg.data.shape[1:] == cv2_shape(image)
    inferencer = MMSegInferencer(
        model=str(tiny_config), weights=str(trained / 'iter_4.pth'),
        device='cpu')
    assert inferencer.model.dataset_meta['classes'] == (
        ShapesDataset.METAINFO['classes'])
    out = inferencer(str(image), out_dir=str(tmp_path / 'vis'))
    assert np.asarray(out['predictions']).shape == cv2_shape(image)
    assert list((tmp_path / 'vis').rglob('*.png'))


# mmsegmentation's own tools --------------------------------------------------


def _mmseg_tool(name: str) -> str:
    import mmseg
    return str(Path(mmseg.__file__).parent / '.mim' / 'tools' / name)


@pytest.mark.slow
def test_mmseg_stock_train_and_test_tools(tiny_config, tmp_path):
    bn = ['--cfg-options', 'model.decode_head.norm_cfg.type=BN']
    work = tmp_path / 'stock'
    _run([_mmseg_tool('train.py'), str(tiny_config), '--work-dir',
          str(work), *bn])
    assert (work / 'iter_4.pth').is_file()
    for extra in ([], ['--tta']):
        output = _run([_mmseg_tool('test.py'), str(tiny_config),
                       str(work / 'iter_4.pth'), '--work-dir',
                       str(tmp_path / 'stock_test'), *extra, *bn])
        assert 'mIoU' in output


@pytest.mark.parametrize('script', ['train.py', 'test.py'])
def test_broken_stack_gets_the_environment_check(script, tmp_path):
    """An import of the stack that fails names the check and its report."""
    broken = tmp_path / 'mmengine'
    broken.mkdir()
    (broken / '__init__.py').write_text(
        "raise ImportError('mmengine is broken here')")
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
    proc = subprocess.run([sys.executable, script, '--help'], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert 'cannot import the training stack' in proc.stderr
    assert 'mmengine is broken here' in proc.stderr
    assert 'python tools/misc/check_env.py' in proc.stderr


# One run per work dir; resuming with other settings -------------------------


def test_second_training_into_a_busy_work_dir_stops(tiny_config, tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(SystemExit) as err:
            _train(str(tiny_config), '--work-dir', str(tmp_path))
        assert f'process {holder.pid}' in str(err.value)
        assert "each other's checkpoints. Use another --work-dir" in str(
            err.value)
        assert not list(tmp_path.glob('*.pth'))
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone, and its lock with it
    _train(str(tiny_config), '--work-dir', str(tmp_path), '--no-validate',
           '--cfg-options', 'train_cfg.max_iters=2')
    assert (tmp_path / 'iter_2.pth').is_file()


def test_resume_with_a_lower_lr_uses_it_and_says_so(tiny_config, trained,
                                                    tmp_path, capsys):
    work = _work_dir_with(tmp_path, trained, ['iter_4.pth'])
    _train(str(tiny_config), '--work-dir', str(work), '--resume',
           '--no-validate', '--cfg-options', 'train_cfg.max_iters=6',
           'optim_wrapper.optimizer.lr=1e-4',
           'train_dataloader.batch_size=1')
    log = capsys.readouterr().out
    assert "lr 0.001 in the checkpoint, 0.0001 in the config: the config's " \
        'wins' in log
    groups = torch.load(work / 'iter_6.pth', weights_only=True)[
        'optimizer']['param_groups']
    assert max(g['lr'] for g in groups) == pytest.approx(1e-4)


def test_the_nan_advice_works_as_written(tiny_config, tmp_path):
    """lr warms up towards 1e30: iteration 1 is fine, 2 damages the weights,
    3 gives NaN. Resuming the latest (damaged) checkpoint with a lower lr
    fails again at once; an earlier one, as the message advises, trains."""
    config = tmp_path / 'ramp.py'
    config.write_text(
        f"_base_ = ['{tiny_config}']\n"
        "param_scheduler = [dict(type='LinearLR', start_factor=1e-33, "
        'by_epoch=False, begin=0, end=4)]\n')
    ramp = ['optim_wrapper.optimizer.lr=1e30', 'train_cfg.max_iters=6',
            'default_hooks.checkpoint.interval=1']
    with pytest.raises(SystemExit) as error:
        _train(str(config), '--work-dir', str(tmp_path),
               '--no-validate', '--cfg-options', *ramp)
    message = str(error.value)
    assert message.startswith('error: loss is nan')
    assert 'at iteration 3' in message
    assert ('--resume --cfg-options optim_wrapper.optimizer.lr=LOWER'
            in message and '--resume-from' in message)
    lower = [*ramp[1:], 'optim_wrapper.optimizer.lr=1e-3']
    with pytest.raises(SystemExit, match='loss is nan'):
        _train(str(config), '--work-dir', str(tmp_path), '--resume',
               '--no-validate', '--cfg-options', *lower)
    _train(str(config), '--work-dir', str(tmp_path), '--resume-from',
           str(tmp_path / 'iter_1.pth'), '--no-validate', '--cfg-options',
           *lower)
    assert (tmp_path / 'iter_6.pth').is_file()
    losses = _losses(tmp_path)
    assert all(math.isfinite(x) for x in losses[-5:])


def test_num_classes_must_match_the_dataset(tiny_config, tmp_path):
    with pytest.raises(SystemExit, match=r'^error: decode_head.num_classes=4 '
                       r'but the train_dataloader dataset \(ShapesDataset\) '
                       'has 8'):
        _train(str(tiny_config), '--work-dir', str(tmp_path),
               '--cfg-options', 'model.decode_head.num_classes=4')


@pytest.mark.parametrize('option, message', [
    ('model.backbone.drop_path_rate=abc', 'cannot build the run: TypeError: '),
    ('model.decode_head.in_channels=7', 'cannot build the run: ValueError: '
     'ProxyHead takes two inputs'),
    ('model.decode_head.type=ProxyHed', "'ProxyHed' is not registered"),
    ('train_dataloader.batch_size=0', 'train_dataloader.batch_size must be'),
])
def test_settings_that_do_not_build_end_with_a_message(
        tiny_config, tmp_path, option, message):
    with pytest.raises(SystemExit) as exit:
        _train(str(tiny_config), '--work-dir', str(tmp_path),
               '--no-validate', '--cfg-options', option)
    assert str(exit.value).startswith('error: ')
    assert message in str(exit.value)


def test_a_work_dir_that_cannot_be_made_ends_with_a_message(
        tiny_config, tmp_path):
    (tmp_path / 'file').write_text('')
    with pytest.raises(SystemExit, match=r'cannot build the run: \w+Error: '
                       r'.*file/run'):
        _train(str(tiny_config), '--work-dir', str(tmp_path / 'file' / 'run'))


@pytest.mark.parametrize('launcher, missing', [
    ('pytorch', 'RANK, WORLD_SIZE'), ('slurm', 'SLURM_PROCID')])
def test_a_launcher_without_its_processes_ends_with_a_message(
        tiny_config, tmp_path, monkeypatch, launcher, missing):
    for name in ('RANK', 'WORLD_SIZE', 'SLURM_PROCID', 'SLURM_NTASKS',
                 'SLURM_LOCALID'):
        monkeypatch.delenv(name, raising=False)
    expected = f'error: --launcher {launcher}: {missing}'
    with pytest.raises(SystemExit, match=expected):
        _train(str(tiny_config), '--work-dir', str(tmp_path), '--launcher',
               launcher)
    with pytest.raises(SystemExit, match=expected):
        _test(str(tiny_config), str(tiny_config), '--work-dir',
              str(tmp_path), '--launcher', launcher)


def test_a_bad_label_map_ends_training_with_its_message(tmp_path):
    """With dataloader workers too: the message is the loader's, without
    the worker's traceback."""
    data = generate_shapes_dataset(str(tmp_path / 'shapes'), num_train=2,
                                   num_val=1)
    label = Path(data) / 'annotations/training/shapes_training_00001.png'
    labels = mmcv.imread(str(label), 'unchanged')
    labels[0, 0] = 9
    mmcv.imwrite(labels, str(label))
    config = tmp_path / 'bad.py'
    config.write_text(TINY_CONFIG.format(base=BASE, data=data))
    with pytest.raises(SystemExit) as exit:
        _train(str(config), '--work-dir', str(tmp_path / 'run'),
               '--no-validate', '--cfg-options',
               'train_dataloader.num_workers=1')
    assert str(exit.value) == (
        f'error: label map {label} has values 9; expected in [0, 8) or the '
        'ignore index 255. Check num_classes and reduce_zero_label, and that '
        'labels hold class ids rather than colours')


@pytest.mark.slow
def test_unseeded_run_resumes_with_its_seed(tiny_config, tmp_path):
    """An unseeded run, stopped and resumed, ends where a run seeded with
    its recorded seed ends."""
    def command(work_dir, max_iters, *extra):
        return ['train.py', str(tiny_config), '--work-dir', str(work_dir),
                '--deterministic', '--no-validate', '--cfg-options',
                'randomness.seed=None', f'train_cfg.max_iters={max_iters}',
                'train_dataloader.num_workers=1',
                'model.backbone.drop_path_rate=0.2', *extra]

    unseeded = tmp_path / 'unseeded'
    _run(command(unseeded, 2))
    seed = torch.load(unseeded / 'iter_2.pth', weights_only=True)[
        'meta']['seed']
    _run(command(unseeded, 4) + ['--resume'])
    seeded = tmp_path / 'seeded'
    _run(command(seeded, 4, f'randomness.seed={seed}'))
    expected = torch.load(seeded / 'iter_4.pth', weights_only=True)
    resumed = torch.load(unseeded / 'iter_4.pth', weights_only=True)
    assert resumed['meta']['seed'] == seed
    for key, value in expected['state_dict'].items():
        diff = (resumed['state_dict'][key].double() - value.double()).abs()
        assert diff.max() <= 1e-6, key
