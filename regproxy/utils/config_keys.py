"""Config keys that nothing reads: mmseg 0.x keys, typos, unknown settings.

mmengine's ``merge_from_dict`` adds whatever key it is given, so a misspelt
``--cfg-options`` key (``model.backbone.embed_dim``) or an mmseg 0.x key
(``data.samples_per_gpu``) is added unread and the run goes on without it.
:func:`translate_legacy_keys` moves the 0.x keys to their 1.x places;
:func:`check_override_keys` refuses other keys that nothing would read, and
:func:`check_config_keys` the top-level keys of a config file that are
near-misses of the runner's (``load_form``). Errors name the closest keys
(``difflib``).
"""
import difflib
import inspect
from typing import Dict, List, Optional, Set, Tuple

from mmengine.config import Config
from mmengine.runner import Runner
from mmseg import registry
from torch.utils.data import DataLoader

__all__ = [
    'LEGACY_KEYS', 'RUNNER_KEYS', 'ConfigKeyError', 'check_config_keys',
    'translate_legacy_keys', 'check_override_keys'
]

# mmseg 0.x keys that users paste from the original README and old notes,
# and where mmseg 1.x keeps each (only the places the config has are set).
LEGACY_KEYS: Dict[str, Tuple[str, ...]] = {
    'data.samples_per_gpu': ('train_dataloader.batch_size', ),
    'data.workers_per_gpu':
    ('train_dataloader.num_workers', 'val_dataloader.num_workers',
     'test_dataloader.num_workers'),
    'optimizer.lr': ('optim_wrapper.optimizer.lr', ),
    'optimizer.weight_decay': ('optim_wrapper.optimizer.weight_decay', ),
    'runner.max_iters': ('train_cfg.max_iters', ),
    'evaluation.interval': ('train_cfg.val_interval', ),
    'checkpoint_config.interval': ('default_hooks.checkpoint.interval', ),
    'log_config.interval': ('default_hooks.logger.interval', ),
    'model.pretrained': ('model.backbone.pretrained', ),
}

# Top-level keys that something reads: mmengine's Runner (from_cfg, train),
# mmseg's tools and this project's runner.
RUNNER_KEYS: Set[str] = {
    name
    for name in inspect.signature(Runner.__init__).parameters
    if name not in ('self', 'cfg')
} | {
    'activation_checkpointing', 'compile', 'custom_imports',
    'efficient_conv_bn_eval', 'find_unused_parameters', 'model_wrapper_cfg',
    'runner_type', 'strategy', 'tta_model', 'tta_pipeline', 'trust_checkpoint',
    'load_strict'
}

# Variables that configs commonly define beside the runner keys; some are
# spelled nearly like one (val_pipeline and tta_pipeline).
_CONFIG_VARIABLES = {
    'crop_size', 'norm_cfg', 'data_root', 'dataset_type', 'scale', 'img_scale',
    'img_ratios', 'img_norm_cfg', 'train_pipeline', 'val_pipeline',
    'test_pipeline', 'warmup', 'vis_backends', 'checkpoint', 'checkpoint_file',
    'models', 'num_classes', 'backend_args'
}

# Keys of dicts without a ``type``, by their place in the config.
_DATALOADER_KEYS = set(inspect.signature(DataLoader).parameters)
# mmengine's default hooks; a config may add more by name
_DEFAULT_HOOKS = {
    'runtime_info', 'timer', 'sampler_seed', 'logger', 'param_scheduler',
    'checkpoint'
}
_UNTYPED_KEYS: Dict[Tuple[str, ...], Set[str]] = {
    ('randomness', ):
    set(inspect.signature(Runner.set_randomness).parameters) - {'self'},
    ('env_cfg', ): {'cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit'},
    ('env_cfg', 'mp_cfg'): {'mp_start_method', 'opencv_num_threads'},
    ('auto_scale_lr', ): {'enable', 'base_batch_size'},
    ('custom_imports', ): {'imports', 'allow_failed_imports'},
    ('default_hooks', ): _DEFAULT_HOOKS,
    ('train_dataloader', ): _DATALOADER_KEYS,
    ('val_dataloader', ): _DATALOADER_KEYS,
    ('test_dataloader', ): _DATALOADER_KEYS,
}

# Keys that the builders read beside the arguments of the built class.
_BUILDER_KEYS = {'type', '_scope_', '_delete_'}
_NORM_KEYS = {'requires_grad'}  # mmcv's build_norm_layer
_OPTIM_WRAPPER_KEYS = {'constructor', 'paramwise_cfg'}


class ConfigKeyError(ValueError):
    """A config key that nothing reads; the message names the closest."""


def check_config_keys(cfg: Config, path: str = 'the config') -> None:
    """Refuse a top-level key that is a near-miss of a runner key.

    Configs define variables of any name, so only a key that is not a runner
    key and is spelled almost like one (``load_form`` for ``load_from``) is
    taken for a typo.

    Args:
        cfg (Config): the loaded config file.
        path (str): its name, for the message.

    Raises:
        ConfigKeyError: naming the key and the runner key it resembles.
    """
    for key in cfg.keys():
        if key in RUNNER_KEYS or key in _CONFIG_VARIABLES:
            continue
        close = difflib.get_close_matches(key, RUNNER_KEYS, n=1, cutoff=0.85)
        if close:
            raise ConfigKeyError(
                f'{path}: top-level key {key!r} is read by nothing; did you '
                f'mean {close[0]!r}? (rename a config variable that only '
                'looks like it)')


def translate_legacy_keys(cfg: Config,
                          options: dict) -> Tuple[dict, List[str]]:
    """Move mmseg 0.x override keys (:data:`LEGACY_KEYS`) to their 1.x
    places.

    Args:
        cfg (Config): the config the overrides are for.
        options (dict): ``DictAction`` result (``{'a.b': value}``).

    Returns:
        tuple[dict, list[str]]: the overrides with 1.x keys, and a note per
        translated key.
    """
    translated, notes = {}, []
    for key, value in options.items():
        if key not in LEGACY_KEYS:
            translated[key] = value
            continue
        places = [
            place for place in LEGACY_KEYS[key]
            if isinstance(cfg.get(place.split('.')[0]), dict)
        ]
        for place in places:
            translated[place] = value
            loader = cfg[place.split('.')[0]]
            if place.endswith('num_workers') and value == 0 and loader.get(
                    'persistent_workers'):
                # torch's DataLoader refuses persistent workers without any
                translated[place.replace('num_workers',
                                         'persistent_workers')] = False
        note = (f'{key}={value} is an mmseg 0.x key, set as '
                f'{", ".join(places) or "nothing (not in this config)"}')
        if key == 'runner.max_iters':
            note += ' (the param_scheduler ends stay as configured)'
        notes.append(note)
    return translated, notes


def check_override_keys(cfg: Config, options: dict) -> None:
    """Refuse overrides of keys that nothing reads.

    A key passes when the config has it, or when the dict it goes into takes
    it: the arguments of that dict's ``type`` (looked up in mmseg's
    registries; a ``type`` override in ``options`` counts), the runner keys
    at the top level, the known keys of untyped dicts such as
    ``randomness``, the dataloaders and ``model.test_cfg``. Where the
    accepted keys cannot be told (a class taking ``**kwargs``, an untyped
    dict of free settings), the key passes.

    Args:
        cfg (Config): the config before the overrides.
        options (dict): ``DictAction`` result (``{'a.b': value}``).

    Raises:
        ConfigKeyError: naming the key, the dict it goes into and the
            closest keys that dict takes.
    """
    for key in options:
        parts = tuple(key.split('.'))
        node, found = cfg._cfg_dict, 0
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif (isinstance(node, (list, tuple)) and part.isdigit()
                  and int(part) < len(node)):
                node = node[int(part)]
            else:
                break
            found += 1
        if not isinstance(node, dict):
            continue  # the config has it, or mmengine's merge decides
        # The first missing key and the new dicts below it.
        for depth in range(found, len(parts)):
            name, place = parts[depth], parts[:depth]
            accepted = _accepted_keys(cfg, node, place, options)
            if accepted is None:
                break
            if name not in accepted:
                _refuse(key, name, place, node, accepted)
            node = {}


def _refuse(key: str, name: str, place: Tuple[str, ...], node: dict,
            accepted: Set[str]) -> None:
    """Raise the error for ``key``, whose part ``name`` goes into the dict
    ``node`` at ``place`` that takes ``accepted``."""
    where = '.'.join(place) or 'the top level'
    if 'type' in node:
        where += f' ({node["type"]})'
    close = difflib.get_close_matches(name, sorted(accepted), n=3, cutoff=0.6)
    raise ConfigKeyError(
        f'config key {key} does not exist and {where} takes no {name!r}' +
        (f'; closest: {", ".join(close)}' if close else '') +
        '. A misspelt key would be added and never read, so it is refused')


def _accepted_keys(cfg: Config, node: dict, place: Tuple[str, ...],
                   options: dict) -> Optional[Set[str]]:
    """Keys the dict ``node`` at ``place`` takes; None if unknown."""
    known = set(node) | _BUILDER_KEYS
    if not place:
        return known | RUNNER_KEYS
    type_ = options.get('.'.join(place + ('type', )), node.get('type'))
    if type_ is not None:
        params = _init_params(type_)
        if params is None:
            return None
        if place[-1] == 'norm_cfg':
            params |= _NORM_KEYS
        if place == ('optim_wrapper', ):
            params |= _OPTIM_WRAPPER_KEYS
        return known | params
    if place == ('model', 'test_cfg'):
        keys = getattr(_registered(cfg.model.get('type')), 'TEST_CFG_KEYS',
                       None)
        return None if keys is None else known | set(keys)
    keys = _UNTYPED_KEYS.get(place)
    return None if keys is None else known | keys


def _registered(type_) -> Optional[object]:
    """The class (or function) a config ``type`` names, from mmseg's
    registries (and their mmengine parents)."""
    if not isinstance(type_, str):
        return type_
    for name in registry.__all__:
        found = getattr(registry, name).get(type_)
        if found is not None:
            return found
    return None


def _init_params(type_) -> Optional[Set[str]]:
    """Argument names of what ``type_`` builds, following ``**kwargs`` up
    the base classes; None when they cannot be told."""
    target = _registered(type_)
    if target is None:
        return None
    if isinstance(target, type):
        inits = [
            c.__dict__['__init__'] for c in target.__mro__
            if '__init__' in c.__dict__
        ]
    else:
        inits = [target]
    names = set()
    for init in inits:
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {
            p.name
            for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {'self'}
    return None
