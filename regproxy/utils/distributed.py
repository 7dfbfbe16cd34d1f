"""Process set-up for the launchers: one process, torchrun/
``torch.distributed.launch``, slurm or mpi, on GPUs (NCCL) or on the CPU
(gloo)."""
import datetime
import gc
import os
import subprocess
from typing import List, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmseg.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel

from .config_keys import registered

__all__ = [
    'LAUNCHERS', 'end_process_group', 'launcher_world_size', 'setup_launcher'
]

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')

# Environment variables that carry (rank, world size, local rank) under the
# launchers that do not set torch's own RANK/WORLD_SIZE/LOCAL_RANK.
_RANK_ENV = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
            'OMPI_COMM_WORLD_LOCAL_RANK'),
}


def launcher_world_size(launcher: str) -> int:
    """Number of processes, also before the runner starts them.

    Args:
        launcher (str): one of :data:`LAUNCHERS`.

    Returns:
        int: the process group's size once started, else the launcher's
        environment variable (1 for 'none').
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if launcher == 'none':
        return 1
    return int(os.environ[_RANK_ENV[launcher][1]])


def end_process_group() -> None:
    """Destroy the default process group, if any, before the interpreter
    exits.

    Call it once the runner is gone: its distributed model wrapper holds the
    group. A group still alive at exit keeps gloo's worker threads running
    while Python finalizes, and a worker that then releases the tensors of
    the last collective needs the GIL and aborts the process ("terminate
    called without an active exception") after all its work is done.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # the runner, its hooks and its model hold each other
        dist.destroy_process_group()


def setup_launcher(cfg: Config, launcher: str) -> List[str]:
    """Adapt the config to the launcher; start the process group on the CPU.

    On distributed CUDA runs, mmengine's runner starts NCCL and wraps the
    model as usual, and in one process it reverts SyncBN to BN itself.
    Distributed without CUDA, the processes talk over gloo: the process
    group is started here (mmengine's start-up selects a CUDA device) and
    DDP gets no ``device_ids``; ``RegProxyRunner.wrap_model`` turns SyncBN,
    which torch runs on GPUs only, into BN (statistics per process).

    Args:
        cfg (Config): config to update in place.
        launcher (str): one of :data:`LAUNCHERS`.

    Returns:
        list[str]: what was changed, to log once the runner's logger exists.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return []
    env_cfg = cfg.get('env_cfg') or {}
    dist_cfg = dict(env_cfg.get('dist_cfg') or {}, backend='gloo')
    cfg.env_cfg = dict(env_cfg, dist_cfg=dist_cfg)
    _use_cpu_ddp(cfg)
    _init_cpu_process_group(launcher, dist_cfg.get('timeout'))
    notes = ['No CUDA device: distributed run on the CPU with gloo '
             f'(world size {dist.get_world_size()}).']
    return notes


def _use_cpu_ddp(cfg: Config) -> None:
    """Let a DDP model wrapper hold a CPU model (no ``device_ids``)."""
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        # The wrapper mmengine's runner builds when the config names none.
        wrapper = dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    if issubclass(registered(wrapper['type'], MODEL_WRAPPERS),
                  DistributedDataParallel):
        # The runner fills device_ids=[LOCAL_RANK] only when it is absent.
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def _init_cpu_process_group(launcher: str,
                            timeout: Optional[float] = None) -> None:
    """Start the gloo process group from the launcher's environment.

    Args:
        launcher (str): 'pytorch' (torchrun or torch.distributed.launch set
            RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), 'slurm' or 'mpi'.
        timeout (float, optional): seconds, as ``env_cfg.dist_cfg.timeout``.
    """
    if dist.is_initialized():
        return
    if launcher != 'pytorch':
        rank, world_size, local_rank = (
            os.environ[k] for k in _RANK_ENV[launcher])
        os.environ.update(
            RANK=rank, WORLD_SIZE=world_size, LOCAL_RANK=local_rank)
        os.environ.setdefault('MASTER_PORT', '29500')
        if launcher == 'slurm' and 'MASTER_ADDR' not in os.environ:
            nodes = os.environ['SLURM_NODELIST']
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {nodes} | head -n1')
    kwargs = {}
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    dist.init_process_group(backend='gloo', **kwargs)
