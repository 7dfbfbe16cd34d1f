"""Set-up shared by ``train.py`` and ``test.py``.

Both scripts parse the same launcher options, load a config with command-line
overrides, and adapt it to where it runs: one process or several, on GPUs
(NCCL) or on the CPU (gloo). They also refuse, before anything is built, to
start on a dataset folder that does not exist.

Call flow of a script::

    parse args -> load_config() -> script-specific edits
        -> check_data_roots() -> setup_launcher() -> build_runner()
        -> log_notes() -> runner.train() / runner.test()
"""
import argparse
import copy
import datetime
import inspect
import os
import os.path as osp
import subprocess
from typing import Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import DATASETS, MODEL_WRAPPERS, RUNNERS
from torch.nn.parallel import DistributedDataParallel

from ..models.utils import sync_bn_to_bn
from .allocator import keep_freed_memory

__all__ = [
    'LAUNCHERS', 'add_common_args', 'resolve_paths', 'load_config',
    'set_work_dir', 'setup_launcher', 'check_data_roots', 'build_runner',
    'log_notes'
]

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')

# How to obtain each dataset, shown when its folders are missing.
_PREPARE_HINTS = {
    'ADE20KDataset':
    'download ADEChallengeData2016.zip and unzip it into data/ade/, which '
    'gives data/ade/ADEChallengeData2016/{images,annotations}/'
    '{training,validation}',
    'CityscapesDataset':
    'unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into '
    'data/cityscapes/, then write the *_labelTrainIds.png label maps with '
    "mmsegmentation's `python tools/dataset_converters/cityscapes.py "
    'data/cityscapes --nproc 8`',
}

# Environment variables that carry (rank, world size, local rank) under the
# launchers that do not set torch's own RANK/WORLD_SIZE/LOCAL_RANK.
_RANK_ENV = {
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
            'OMPI_COMM_WORLD_LOCAL_RANK'),
}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the options that ``train.py`` and ``test.py`` share.

    Args:
        parser (argparse.ArgumentParser): parser to extend in place.
    """
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints (default: work_dir of the '
        'config, else work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. '
        'model.backbone.drop_path_rate=0.2 train_dataloader.batch_size=4')
    parser.add_argument(
        '--options',
        nargs='+',
        action=DictAction,
        help='same as --cfg-options (spelling of mmseg 0.x and of the '
        'original release); --cfg-options wins where both set a key')
    parser.add_argument(
        '--launcher',
        choices=LAUNCHERS,
        default='none',
        help='how the processes were started (none: a single process)')
    # torch.distributed.launch passes --local-rank (torch>=2.0) or
    # --local_rank (older) to every process.
    parser.add_argument(
        '--local_rank',
        '--local-rank',
        type=int,
        default=0,
        help=argparse.SUPPRESS)


def resolve_paths(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  names: Sequence[str]) -> None:
    """Give every path argument its value from ``--name`` or a positional.

    The original release spelled paths as options (``--config X
    --checkpoint Y``), mmseg 1.x as positionals; any mix is accepted. Each
    ``name`` is a positional with ``nargs='?'`` and ``--name`` stores into
    ``name_flag``. argparse fills positionals in order whatever the flags, so
    the given positionals are re-dealt, in order, to the names without a
    flag.

    Args:
        parser (argparse.ArgumentParser): reports errors.
        args (argparse.Namespace): parsed arguments, updated in place.
        names (Sequence[str]): path arguments in positional order.
    """
    positionals = [getattr(args, n) for n in names if getattr(args, n)]
    for name in names:
        value = getattr(args, f'{name}_flag')
        if value is None and positionals:
            value = positionals.pop(0)
        if value is None:
            parser.error(f'{name.upper()} is required (positional or '
                         f'--{name})')
        setattr(args, name, value)
        delattr(args, f'{name}_flag')
    if positionals:
        parser.error(f'unexpected extra path(s): {" ".join(positionals)}')


def load_config(path: str, *overrides: Optional[dict]) -> Config:
    """Load a config file and merge command-line overrides into it.

    Args:
        path (str): config file.
        *overrides (dict, optional): ``DictAction`` results, merged in order
            (a later one wins on the same key); ``None`` entries are skipped.

    Returns:
        Config: the merged config.
    """
    cfg = Config.fromfile(path)
    merged = {}
    for options in overrides:
        merged.update(options or {})
    if merged:
        cfg.merge_from_dict(merged)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str],
                 config_path: str) -> None:
    """Set ``cfg.work_dir``: the flag, then the config, then
    ``work_dirs/<config file stem>``.

    Args:
        cfg (Config): config to update in place.
        work_dir (str, optional): ``--work-dir``.
        config_path (str): config file, whose name is the fallback.
    """
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


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


def check_data_roots(cfg: Config, loaders: Sequence[str]) -> None:
    """Fail early, with the preparation step, when a dataset is missing.

    Checks ``data_root`` and the image and annotation folders of every
    dataset (wrappers such as ``ConcatDataset`` included) of the named
    dataloaders that the config defines. Datasets whose class sets
    ``generates_data = True`` create their files on first use and are
    skipped, as are remote paths (``s3://...``).

    Args:
        cfg (Config): the config.
        loaders (Sequence[str]): e.g. ``('train_dataloader',
            'val_dataloader')``.

    Raises:
        FileNotFoundError: naming the missing path and how to prepare it.
    """
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for dataset in _leaf_datasets(cfg[loader]['dataset']):
            problem = _missing_data(dataset)
            if problem is None:
                continue
            type_name = _type_name(dataset['type'])
            hint = _PREPARE_HINTS.get(type_name)
            raise FileNotFoundError(
                f'{loader} ({type_name}): {problem}. Prepare the dataset as '
                'described in README.md, section "Preparing datasets"' +
                (f': {hint}' if hint else '') +
                '. A dataset kept elsewhere can be linked there or given per '
                f'dataloader with --cfg-options {loader}.dataset.data_root='
                'PATH.')


def _leaf_datasets(dataset: dict) -> Iterator[dict]:
    """The datasets inside (possibly nested) dataset wrappers."""
    if 'datasets' in dataset:  # ConcatDataset
        for child in dataset['datasets']:
            yield from _leaf_datasets(child)
    elif 'dataset' in dataset:  # RepeatDataset, ClassBalancedDataset
        yield from _leaf_datasets(dataset['dataset'])
    else:
        yield dataset


def _type_name(dataset_type) -> str:
    return dataset_type if isinstance(dataset_type,
                                      str) else dataset_type.__name__


def _missing_data(dataset: dict) -> Optional[str]:
    """What is missing for ``dataset`` (a config dict), or None."""
    cls = dataset['type']
    if isinstance(cls, str):
        cls = DATASETS.get(cls)
    if cls is not None and getattr(cls, 'generates_data', False):
        return None
    root = dataset.get('data_root') or ''
    folders = [root] if root else []
    prefix = dataset.get('data_prefix') or {}
    folders += [
        osp.join(root, prefix[key]) for key in ('img_path', 'seg_map_path')
        if prefix.get(key)
    ]
    if dataset.get('ann_file'):
        folders.append(osp.join(root, dataset['ann_file']))
    for path in folders:
        if '://' not in path and not osp.exists(path):
            where = '' if osp.isabs(path) else f' (in {os.getcwd()})'
            return f"'{path}' does not exist{where}"
    seg_dir = osp.join(root, prefix.get('seg_map_path') or '')
    suffix = dataset.get('seg_map_suffix', _default_arg(cls, 'seg_map_suffix'))
    if prefix.get('seg_map_path') and suffix and '://' not in seg_dir:
        if not _contains_file(seg_dir, suffix):
            return f"'{seg_dir}' holds no '*{suffix}' label map"
    return None


def _default_arg(cls, name: str):
    """Default of argument ``name`` of ``cls.__init__``, or None."""
    if cls is None:
        return None
    param = inspect.signature(cls.__init__).parameters.get(name)
    if param is None or param.default is param.empty:
        return None
    return param.default


def _contains_file(folder: str, suffix: str) -> bool:
    """Whether ``folder`` or a sub-folder holds a file ending in ``suffix``;
    stops at the first one."""
    for _, _, files in os.walk(folder):
        if any(f.endswith(suffix) for f in files):
            return True
    return False


def build_runner(cfg: Config) -> Runner:
    """Build the runner the config asks for (``runner_type``) or mmengine's.

    Args:
        cfg (Config): the prepared config.

    Returns:
        Runner: the runner.
    """
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def log_notes(runner: Runner, notes: Sequence[str]) -> None:
    """Log what the script changed in the config, one line each.

    Args:
        runner (Runner): supplies the (rank-aware) logger.
        notes (Sequence[str]): messages.
    """
    for note in notes:
        print_log(note, logger=runner.logger)
