"""Process set-up for the launchers: one process, torchrun/
``torch.distributed.launch``, slurm or mpi, on GPUs (NCCL) or on the CPU
(gloo)."""
import copy
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

from ..models.utils import sync_bn_to_bn
from .allocator import keep_freed_memory

__all__ = ['LAUNCHERS', 'end_process_group', 'setup_launcher']

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')

# Environment variables that carry (rank, world size, local rank) under the
# launchers that do not set torch's own RANK/WORLD_SIZE/LOCAL_RANK.
_RANK_ENV = {
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
            'OMPI_COMM_WORLD_LOCAL_RANK'),
}


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
    """Adapt the config to the launcher and the device; start the process
    group on the CPU.

    On distributed CUDA runs, mmengine's runner starts NCCL and wraps the
    model as usual. Without CUDA the processes talk over gloo: the process
    group is started here (mmengine's start-up selects a CUDA device) and
    DDP gets no ``device_ids``. SyncBN is kept only where it runs, in a
    distributed CUDA group; elsewhere it becomes BN. On the CPU, freed
    memory is kept for reuse (:func:`keep_freed_memory`).

    Args:
        cfg (Config): config to update in place.
        launcher (str): one of :data:`LAUNCHERS`.

    Returns:
        list[str]: what was changed, to log once the runner's logger exists.
    """
    cfg.launcher = launcher
    notes = []
    distributed = launcher != 'none'
    cuda = torch.cuda.is_available()
    if not cuda and keep_freed_memory():
        notes.append('CPU run: freed memory is kept for reuse (glibc '
                     'mallopt), saving page faults on large tensors.')
    if distributed and not cuda:
        if cfg.get('env_cfg') is None:
            cfg.env_cfg = dict()
        dist_cfg = dict(cfg.env_cfg.get('dist_cfg') or {}, backend='gloo')
        cfg.env_cfg.dist_cfg = dist_cfg
        _use_cpu_ddp(cfg)
        _init_cpu_process_group(launcher, dist_cfg.get('timeout'))
        notes.append('No CUDA device: distributed run on the CPU with gloo '
                     f'(world size {dist.get_world_size()}).')
    if not (distributed and cuda):
        before = copy.deepcopy(cfg.model)
        sync_bn_to_bn(cfg.model)
        if cfg.model != before:
            notes.append('SyncBN needs a distributed CUDA run: using BN.')
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
    wrapper_type = wrapper['type']
    if isinstance(wrapper_type, str):
        wrapper_type = MODEL_WRAPPERS.get(wrapper_type)
    if issubclass(wrapper_type, DistributedDataParallel):
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
    if launcher in _RANK_ENV:
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
