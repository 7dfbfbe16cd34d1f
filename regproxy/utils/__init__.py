from .allocator import keep_freed_memory
from .cli import (DTYPES, add_common_args, add_shape_arg,
                  add_trust_checkpoint_arg, build_runner, fail, load_config,
                  log_notes, resolve_paths, set_work_dir)
from .distributed import LAUNCHERS, end_process_group, setup_launcher
from .model_cfg import standalone_model_cfg
from .total_batch import launcher_world_size, plan_total_batch

__all__ = [
    'DTYPES', 'LAUNCHERS', 'add_common_args', 'add_shape_arg',
    'add_trust_checkpoint_arg',
    'build_runner', 'end_process_group', 'fail', 'keep_freed_memory',
    'load_config', 'log_notes', 'resolve_paths', 'set_work_dir',
    'setup_launcher', 'standalone_model_cfg', 'launcher_world_size',
    'plan_total_batch'
]
