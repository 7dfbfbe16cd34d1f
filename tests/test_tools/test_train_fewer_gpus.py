"""Training on fewer GPUs than the recipe's 8: the total-batch report,
gradient accumulation counted in optimizer steps, mmseg 0.x keys on the
command line, activation checkpointing, two simulated nodes and the launch
scripts."""
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scripts import load_script
from tests.test_tools.test_train_test_cli import (  # noqa: F401
    REPO, _free_port, _losses, _train, tiny_config, train_script)

T16_ADE = str(REPO / 'configs' / 'regproxy_ade20k' /
              'regproxy-t16-sub4+implicit-mid-4+512x512+160k+adamw-poly+'
              'ade20k.py')
TIMM_CONFIG = next((REPO / 'configs' / 'regproxy_timm').glob('*.py'))

# Hooks the subprocess runs import from a module written next to the config.
HOOKS = '''
import os
import signal

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeightsHook(Hook):
    """Every rank saves its final parameters as weights_rank<R>.pth (BN
    statistics stay per rank: on the CPU SyncBN is BN and DDP does not
    broadcast buffers)."""

    def after_train(self, runner):
        model = runner.model
        model = model.module if is_model_wrapper(model) else model
        torch.save(dict(model.named_parameters()),
                   os.path.join(runner.work_dir, f'weights_rank{get_rank()}.pth'))


@HOOKS.register_module()
class KillInsideStepHook(Hook):
    """SIGKILL after the first micro-batch of optimizer step ``step``."""

    def __init__(self, step):
        self.step = step

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 != self.step:
            return
        wrapper = runner.optim_wrapper
        update = wrapper.update_params

        def update_then_die(*args, **kwargs):
            update(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        wrapper.update_params = update_then_die
'''


def _config_with_hooks(tmp_path: Path, base: Path, *hooks: str) -> Path:
    """A config on ``base`` whose custom hooks are the runtime's plus
    ``hooks`` (from :data:`HOOKS`)."""
    (tmp_path / 'fewer_gpus_hooks.py').write_text(HOOKS)
    config = tmp_path / 'with_hooks.py'
    config.write_text(
        f"_base_ = ['{base}']\n"
        "custom_imports = dict(imports=['regproxy', 'fewer_gpus_hooks'],"
        " allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='NonFiniteLossHook'),"
        " dict(type='RNGStateHook'), dict(type='WeightsOnlyCheckpointHook'),"
        f" {', '.join(hooks)}]\n")
    return config


def _env(tmp_path: Path) -> dict:
    return dict(os.environ,
                OMP_NUM_THREADS='1',
                GLOO_SOCKET_IFNAME='lo',
                PYTHONPATH=f'{REPO}{os.pathsep}{tmp_path}')


def _log(work_dir: Path) -> str:
    return ''.join(p.read_text() for p in sorted(work_dir.glob('*/*.log')))


def _train_cfg(*argv: str):
    return train_script.prepare_config(train_script.parse_args(argv))


# Command line ----------------------------------------------------------------


def test_0x_samples_per_gpu_changes_the_batch():
    cfg, notes = _train_cfg(T16_ADE, '--options', 'data.samples_per_gpu=4')
    assert cfg.train_dataloader.batch_size == 4
    assert ('data.samples_per_gpu=4 is an mmseg 0.x key, set as '
            'train_dataloader.batch_size') in notes


def test_misspelt_key_is_an_error_naming_the_real_one():
    with pytest.raises(SystemExit, match='closest: embed_dims'):
        _train_cfg(T16_ADE, '--cfg-options', 'model.backbone.embed_dim=192')


def test_with_cp_flag():
    cfg, notes = _train_cfg(T16_ADE, '--with-cp')
    assert cfg.model.backbone.with_cp is True
    assert any('--with-cp' in note for note in notes)
    with pytest.raises(SystemExit, match='has no with_cp argument'):
        _train_cfg(str(TIMM_CONFIG), '--with-cp')


def test_benchmark_with_cp_reaches_the_memory_worker(monkeypatch):
    """The benchmark measures peak memory in a fresh process: --with-cp
    must be applied there too."""
    benchmark = load_script('tools/analysis/benchmark.py')
    built = []

    def record(cfg, path, device):
        built.append(cfg.model.backbone.get('with_cp'))
        raise KeyboardInterrupt  # stop before any step

    monkeypatch.setattr(benchmark, 'build_model', record)
    spec = '{"path": "ours", "mode": "train", "dtype": "float32"}'
    for flags, expected in [([], None), (['--with-cp'], True)]:
        with pytest.raises(KeyboardInterrupt):
            benchmark.main([T16_ADE, '--worker', spec, *flags])
        assert built.pop() == expected


@pytest.mark.parametrize('value', ['0', '-2', 'x', '1.5'])
def test_accumulate_takes_auto_or_a_whole_number(value):
    with pytest.raises(SystemExit):
        train_script.parse_args([T16_ADE, '--accumulate', value])
    assert train_script.parse_args([T16_ADE, '--accumulate',
                                    '4']).accumulate == 4


# One process ---------------------------------------------------------------


def test_one_process_warns_then_keeps_the_recipe_with_one_flag(
        tiny_config, tmp_path):
    plain = tmp_path / 'plain'
    _train(str(tiny_config), '--work-dir', str(plain), '--no-validate',
           '--cfg-options', 'train_cfg.max_iters=1')
    log = _log(plain)
    assert ('total batch = processes x batch_size = 1 x 2 = 2 (recipe: 16)'
            in log)
    assert "WARNING - total batch 2 differs from the recipe's 16" in log
    assert '--accumulate auto' in log and '--auto-scale-lr' in log
    kept = tmp_path / 'kept'
    _train(str(tiny_config), '--work-dir', str(kept), '--no-validate',
           '--accumulate', 'auto', '--cfg-options', 'train_cfg.max_iters=2')
    log = _log(kept)
    assert ('total batch = processes x batch_size x accumulate = '
            '1 x 2 x 8 = 16 (recipe: 16)') in log
    assert 'differs from the recipe' not in log
    # 2 optimizer steps of 8 micro-batches: 2 logged losses, iter_2.pth
    assert len(_losses(kept)) == 2
    assert sorted(p.name for p in kept.glob('iter_*.pth')) == ['iter_2.pth']


# Several processes -----------------------------------------------------------


@pytest.mark.slow
def test_two_nodes_train_as_one_job(tiny_config, tmp_path):
    """Two torchrun agents as two nodes (one process each, c10d rendezvous
    on 127.0.0.1, gloo) with 2 x 2 x accumulate 4 = the recipe's 16."""
    config = _config_with_hooks(tmp_path, tiny_config,
                                "dict(type='SaveRankWeightsHook')")
    work = tmp_path / 'work'
    port = _free_port()
    agents = []
    for node in (0, 1):
        log = open(tmp_path / f'node{node}.log', 'w')
        agents.append(
            (log,
             subprocess.Popen([
                 sys.executable, '-m', 'torch.distributed.run', '--nnodes',
                 '2', '--node_rank',
                 str(node), '--nproc_per_node', '1', '--rdzv_backend', 'c10d',
                 '--rdzv_endpoint', f'127.0.0.1:{port}', '--rdzv_id',
                 'two_nodes', '--local_addr', '127.0.0.1', 'train.py',
                 str(config), '--launcher', 'pytorch', '--work-dir',
                 str(work), '--no-validate', '--accumulate', 'auto',
                 '--cfg-options', 'default_hooks.checkpoint.interval=4'
             ],
                              cwd=REPO,
                              env=_env(tmp_path),
                              stdout=log,
                              stderr=subprocess.STDOUT)))
    for log, agent in agents:
        agent.wait(timeout=400)
        log.close()
    output = ''.join((tmp_path / f'node{n}.log').read_text() for n in (0, 1))
    assert all(agent.returncode == 0 for _, agent in agents), output[-5000:]
    assert 'distributed run on the CPU with gloo (world size 2)' in output
    assert ('processes x batch_size x accumulate = 2 x 2 x 4 = 16 '
            '(recipe: 16)') in output
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_4.pth']
    assert len(_losses(work)) == 4
    weights = [
        torch.load(work / f'weights_rank{r}.pth', weights_only=True)
        for r in (0, 1)
    ]
    assert len(weights[0]) == len(weights[1]) > 0
    for key, value in weights[0].items():
        assert torch.equal(weights[1][key], value), key


@pytest.mark.slow
def test_resume_after_a_kill_inside_an_accumulation(tiny_config, tmp_path):
    """SIGKILL after the first of the 2 micro-batches of step 3, then
    --resume from iter_2.pth: the final weights equal an uninterrupted
    run's (deterministic, CPU, drop path on, augmentation in a worker)."""

    def command(config, work_dir):
        return [
            sys.executable, 'train.py',
            str(config), '--work-dir',
            str(work_dir), '--deterministic', '--seed', '0', '--no-validate',
            '--accumulate', '2', '--cfg-options', 'train_cfg.max_iters=4',
            'train_dataloader.num_workers=1',
            'model.backbone.drop_path_rate=0.2'
        ]

    def run(args):
        return subprocess.run(args,
                              cwd=REPO,
                              env=_env(tmp_path),
                              capture_output=True,
                              text=True,
                              timeout=300)

    full, killed = tmp_path / 'full', tmp_path / 'killed'
    done = run(command(tiny_config, full))
    assert done.returncode == 0, done.stderr[-3000:]
    dying = _config_with_hooks(tmp_path, tiny_config,
                               "dict(type='KillInsideStepHook', step=3)")
    died = run(command(dying, killed))
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    assert sorted(p.name for p in killed.glob('iter_*.pth')) == ['iter_2.pth']
    resumed = run(command(tiny_config, killed) + ['--resume'])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(full / 'iter_4.pth', weights_only=True)
    result = torch.load(killed / 'iter_4.pth', weights_only=True)
    assert result['meta']['iter'] == 4
    for key, value in expected['state_dict'].items():
        diff = (result['state_dict'][key].double() - value.double()).abs()
        assert diff.max() <= 1e-6, key


# Launch scripts ----------------------------------------------------------------


def _fake_command(folder: Path, name: str) -> Path:
    """An executable ``name`` in ``folder`` that prints its arguments."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _script(name: str, args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(REPO / 'tools' / name), *args],
                          env=env,
                          capture_output=True,
                          text=True)


@pytest.mark.parametrize('name',
                         ['dist_train.sh', 'dist_test.sh', 'slurm_train.sh'])
def test_scripts_parse_and_need_their_arguments(name):
    assert subprocess.run(['bash', '-n',
                           str(REPO / 'tools' / name)]).returncode == 0
    proc = _script(name, ['only_one'], dict(os.environ))
    assert proc.returncode == 2 and 'usage:' in proc.stderr


def test_dist_scripts_start_torchrun_for_several_nodes(tmp_path):
    python = _fake_command(tmp_path / 'bin', 'python')
    env = dict(os.environ,
               PYTHON=str(python),
               NNODES='2',
               NODE_RANK='1',
               MASTER_ADDR='10.0.0.1',
               PORT='29501')
    torchrun = [
        '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
        '--master_addr=10.0.0.1', '--master_port=29501', '--nproc_per_node=8'
    ]
    proc = _script('dist_train.sh', ['cfg.py', '8', '--accumulate', 'auto'],
                   env)
    assert proc.stdout.split('\n')[:-1] == torchrun + [
        f'{REPO}/train.py', 'cfg.py', '--launcher', 'pytorch', '--accumulate',
        'auto'
    ], proc.stderr
    proc = _script('dist_test.sh',
                   ['cfg.py', 'ckpt.pth', '8', '--eval', 'mIoU'], env)
    assert proc.stdout.split('\n')[:-1] == torchrun + [
        f'{REPO}/test.py', 'cfg.py', 'ckpt.pth', '--launcher', 'pytorch',
        '--eval', 'mIoU'
    ], proc.stderr
    # one node by default, every variable set (set -u)
    env = dict(os.environ, PYTHON=str(python))
    for name in ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT'):
        env.pop(name, None)
    proc = _script('dist_train.sh', ['cfg.py', '2'], env)
    assert proc.returncode == 0, proc.stderr
    assert '--nnodes=1' in proc.stdout and '--master_addr=127.0.0.1' in (
        proc.stdout)


def test_slurm_script_passes_its_variables_to_srun(tmp_path):
    _fake_command(tmp_path / 'bin', 'srun')
    env = dict(os.environ,
               PATH=f'{tmp_path / "bin"}{os.pathsep}'
               f'{os.environ["PATH"]}',
               GPUS='16',
               GPUS_PER_NODE='8',
               CPUS_PER_TASK='4',
               SRUN_ARGS='--time=1:00:00 --qos=high')
    env.pop('PYTHON', None)
    proc = _script('slurm_train.sh',
                   ['part', 'job', 'cfg.py', '--accumulate', 'auto'], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split('\n')[:-1] == [
        '-p', 'part', '--job-name=job', '--gres=gpu:8', '--ntasks=16',
        '--ntasks-per-node=8', '--cpus-per-task=4', '--kill-on-bad-exit=1',
        '--time=1:00:00', '--qos=high', 'python', '-u', f'{REPO}/train.py',
        'cfg.py', '--launcher', 'slurm', '--accumulate', 'auto'
    ]
