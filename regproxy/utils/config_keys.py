"""Spell-check of config keys, and mmseg 0.x keys on the command line.

mmengine's ``merge_from_dict`` adds whatever key it is given, so a misspelt
``--cfg-options`` key (``model.backbone.embed_dim``) or an mmseg 0.x key
(``data.samples_per_gpu``) is added unread and the run goes on without it.
:func:`translate_legacy_keys` moves the 0.x keys to their 1.x places;
:func:`check_override_keys` refuses a key that the config lacks and the
class built from its dict does not take; :func:`check_config_keys` refuses
top-level keys of a config file that are near-misses of the runner's
(``load_form``); :func:`check_types` refuses a ``type`` that no registry
has. Errors name the closest keys (``difflib``).
"""
import difflib
import inspect
from typing import Any, Dict, List, Optional, Set, Tuple

from mmengine.config import Config
from mmengine.registry import Registry
from mmengine.runner import Runner
from mmseg import registry as mmseg_registry

__all__ = [
    'LEGACY_KEYS', 'RUNNER_KEYS', 'ConfigKeyError', 'registered',
    'check_config_keys', 'check_types', 'translate_legacy_keys',
    'check_override_keys'
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
    'load_strict', 'allow_non_finite_weights'
}

# Variables of mmseg's configs that are spelled nearly like a runner key.
_CONFIG_VARIABLES = {'test_pipeline', 'models'}

# Top-level dicts that the runner passes to a method, not to a class.
_RUNNER_METHODS = {'randomness': Runner.set_randomness}

# Keys that the builders read beside the arguments of the built class:
# mmengine's registry, mmcv's build_norm_layer, build_optim_wrapper.
_BUILDER_KEYS = {
    'type', '_scope_', '_delete_', 'requires_grad', 'constructor',
    'paramwise_cfg'
}


def _registries() -> List[Registry]:
    """mmseg's registries, with their names imported."""
    registries = [getattr(mmseg_registry, n) for n in mmseg_registry.__all__]
    for registry in registries:
        registry.import_from_location()
    return registries


class ConfigKeyError(ValueError):
    """A config key that nothing reads; the message names the closest."""


def registered(type_: Any, registry: Optional[Registry] = None) -> Any:
    """The class (or function) that a config ``type`` names.

    Args:
        type_ (str | type): a registered name, or the class itself.
        registry (Registry, optional): where to look; None looks in each
            of mmseg's registries (and their mmengine parents).

    Returns:
        The class, or None when no registry has the name.
    """
    if not isinstance(type_, str):
        return type_
    registries = [registry] if registry else _registries()
    for found in (r.get(type_) for r in registries):
        if found is not None:
            return found
    return None


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


def check_types(cfg: Config) -> None:
    """Refuse a ``type`` that no registry has, before anything is built.

    mmengine's registry would raise a ``KeyError`` deep in the build, after
    printing the whole config. Scoped names (``mmpretrain.X``) are left to
    their scope's registry.

    Args:
        cfg (Config): the merged config.

    Raises:
        ConfigKeyError: naming the key, the type and the closest names.
    """
    for key, type_ in _types(cfg.to_dict(), ''):
        if '.' in type_ or registered(type_) is not None:
            continue
        names = set()
        for registry in _registries():
            names.update(registry.module_dict)
            if registry.parent is not None:
                names.update(registry.parent.module_dict)
        close = difflib.get_close_matches(type_, sorted(names), n=3)
        raise ConfigKeyError(
            f'{key} {type_!r} is not registered; ' +
            (f'closest: {", ".join(close)}' if close else
             'is its module in custom_imports?'))


def _types(node: Any, key: str):
    """``(key, type)`` for every string ``type`` in a nested config."""
    items = (node.items() if isinstance(node, dict) else
             enumerate(node) if isinstance(node, (list, tuple)) else ())
    for name, value in items:
        where = f'{key}.{name}' if key else str(name)
        if name == 'type' and isinstance(value, str):
            yield where, value
        else:
            yield from _types(value, where)


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
        translated.update(dict.fromkeys(places, value))
        note = (f'{key}={value} is an mmseg 0.x key, set as '
                f'{", ".join(places) or "nothing (not in this config)"}')
        if key == 'runner.max_iters':
            note += ' (the param_scheduler ends stay as configured)'
        notes.append(note)
    return translated, notes


def check_override_keys(cfg: Config, options: dict) -> None:
    """Refuse overrides of keys that nothing reads.

    Each key is followed into the config to its first part that the config
    lacks, and on into the new dicts below it. Such a part passes when the
    dict it goes into takes it: at the top level a runner key; in a dict
    with a ``type`` (a ``type`` override in ``options`` counts) an argument
    of that class, in ``randomness`` one of ``Runner.set_randomness``.
    Where the accepted keys cannot be told (a class taking ``**kwargs``, a
    dict without a ``type``), only a near-miss of a key the dict has is
    refused.

    Args:
        cfg (Config): the config before the overrides.
        options (dict): ``DictAction`` result (``{'a.b': value}``).

    Raises:
        ConfigKeyError: naming the key, the dict it goes into and the
            closest keys that dict takes.
    """
    tree = cfg.to_dict()
    for key in options:
        node, parts = tree, key.split('.')
        for depth, part in enumerate(parts):
            if isinstance(node, (list, tuple)) and part.isdigit():
                node = node[int(part)] if int(part) < len(node) else None
            elif not isinstance(node, dict):
                break  # a value is replaced: mmengine's merge decides
            elif part in node:
                node = node[part]
            else:
                place = '.'.join(parts[:depth])
                type_ = node.get('type', _RUNNER_METHODS.get(place))
                type_ = options.get(f'{place}.type', type_)
                _check_new_key(key, part, place, node, type_)
                node = {}  # new below


def _check_new_key(key: str, name: str, place: str, node: dict,
                   type_: Any) -> None:
    """Refuse ``name``, new in the dict ``node`` at ``place`` (built as
    ``type_``), unless that dict takes it."""
    known = set(node) | _BUILDER_KEYS
    accepted = RUNNER_KEYS if not place else _init_args(type_)
    if accepted is None:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if not close:
            return
    elif name in accepted | known:
        return
    else:
        close = difflib.get_close_matches(
            name, sorted(accepted | known), n=3, cutoff=0.6)
    where = place or 'the top level'
    if isinstance(type_, (str, type)):
        where += f' ({type_ if isinstance(type_, str) else type_.__name__})'
    raise ConfigKeyError(
        f'config key {key} does not exist and {where} takes no {name!r}' +
        (f'; closest: {", ".join(close)}' if close else '') +
        '. A misspelt key would be added and never read, so it is refused')


def _init_args(type_: Any) -> Optional[Set[str]]:
    """Argument names of what ``type_`` builds; None when they cannot be
    told (no type, not registered, ``**kwargs``)."""
    target = registered(type_) if type_ is not None else None
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}
