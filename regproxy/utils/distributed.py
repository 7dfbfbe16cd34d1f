"""Process set-up for the launchers: one process, torchrun/
``torch.distributed.launch``, slurm or mpi, on GPUs (NCCL, started by
mmengine's runner) or on the CPU (gloo, started here)."""
import datetime
import gc
import os
import subprocess
from typing import List

import torch
import torch.distributed as dist
from mmengine.config import Config

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')

# Environment variables that carry (rank, world size, local rank) under the
# launchers that do not set torch's own RANK/WORLD_SIZE/LOCAL_RANK.
_RANK_ENV = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
            'OMPI_COMM_WORLD_LOCAL_RANK'),
}


def launcher_env(launcher: str) -> List[str]:
    """(rank, world size, local rank) as ``launcher`` (not ``'none'``)
    set them; a ``ValueError`` names those missing."""
    missing = [k for k in _RANK_ENV[launcher] if k not in os.environ]
    if missing:
        starter = dict(pytorch='torchrun', slurm='srun', mpi='mpirun')
        raise ValueError(
            f'--launcher {launcher}: {", ".join(missing)} not set: start the '
            f'processes with {starter[launcher]}, or leave --launcher out '
            'for one process')
    return [os.environ[k] for k in _RANK_ENV[launcher]]


def launcher_world_size(launcher: str) -> int:
    """Number of processes of a run under ``launcher`` (one of
    :data:`LAUNCHERS`), also before the runner starts the process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if launcher == 'none':
        return 1
    return int(launcher_env(launcher)[1])


def end_process_group() -> None:
    """Destroy the default process group, if any, once the runner is gone
    (its model wrapper holds the group): gloo's worker threads, left running
    while Python finalizes, abort the process ("terminate called without an
    active exception") after all its work is done."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # the runner, its hooks and its model hold each other
        dist.destroy_process_group()


def setup_launcher(cfg: Config, launcher: str) -> List[str]:
    """Set the config's launcher; without CUDA, start the gloo process
    group of a distributed run here, as mmengine 0.10.7's ``init_dist``
    would but for the CUDA device it selects first
    (``RegProxyRunner.wrap_model`` then wraps the CPU model).

    Args:
        cfg (Config): config to update in place; its
            ``env_cfg.dist_cfg.timeout`` (seconds) is the group's.
        launcher (str): one of :data:`LAUNCHERS`.

    Returns:
        list[str]: what was done, to log once the runner's logger exists.
    """
    cfg.launcher = launcher
    if launcher == 'none' or dist.is_initialized():
        return []
    rank, world_size, local_rank = launcher_env(launcher)
    if torch.cuda.is_available():
        return []  # mmengine's runner starts NCCL
    if launcher != 'pytorch':  # torchrun sets these and MASTER_ADDR/PORT
        os.environ.update(
            RANK=rank, WORLD_SIZE=world_size, LOCAL_RANK=local_rank)
        os.environ.setdefault('MASTER_PORT', '29500')
        if launcher == 'slurm' and 'MASTER_ADDR' not in os.environ:
            nodes = os.environ['SLURM_NODELIST']
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {nodes} | head -n1')
    timeout = ((cfg.get('env_cfg') or {}).get('dist_cfg') or {}).get(
        'timeout', 1800)  # seconds; torch's default for gloo
    dist.init_process_group(
        backend='gloo', timeout=datetime.timedelta(seconds=timeout))
    return ['No CUDA device: distributed run on the CPU with gloo '
            f'(world size {dist.get_world_size()}).']
