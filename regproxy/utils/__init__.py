from .cli import (DTYPES, add_common_args, add_shape_arg,
                  add_trust_checkpoint_arg, build_runner, config_errors,
                  error_text, fail, load_config, load_script_config,
                  parse_with_paths, positive_int)
from .distributed import (LAUNCHERS, end_process_group, launcher_world_size,
                          setup_launcher)
from .total_batch import plan_total_batch

__all__ = [
    'DTYPES', 'LAUNCHERS', 'add_common_args', 'add_shape_arg',
    'add_trust_checkpoint_arg', 'build_runner', 'config_errors',
    'end_process_group', 'error_text', 'fail', 'launcher_world_size',
    'load_config', 'load_script_config', 'parse_with_paths',
    'plan_total_batch', 'positive_int', 'setup_launcher'
]
