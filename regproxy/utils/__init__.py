from .allocator import keep_freed_memory
from .launch import (LAUNCHERS, add_common_args, build_runner,
                     check_data_roots, load_config, log_notes, resolve_paths,
                     set_work_dir, setup_launcher)

__all__ = [
    'LAUNCHERS', 'add_common_args', 'build_runner', 'check_data_roots',
    'keep_freed_memory', 'load_config', 'log_notes', 'resolve_paths',
    'set_work_dir', 'setup_launcher'
]
