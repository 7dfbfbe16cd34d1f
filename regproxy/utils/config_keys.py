"""Spell-check of ``--cfg-options`` keys (and of the types they name), and
their mmseg 0.x spellings:
mmengine's ``merge_from_dict`` adds whatever key it is given, and a misspelt
or 0.x key (``data.samples_per_gpu``) would never be read."""
import difflib
import inspect
from typing import Any, Dict, List, Optional, Set, Tuple

from mmengine.config import Config
from mmengine.registry import Registry
from mmengine.registry import root as mmengine_registry
from mmengine.runner import Runner
from mmseg import registry as mmseg_registry

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
    'activation_checkpointing', 'compile', 'custom_imports',
    'efficient_conv_bn_eval', 'find_unused_parameters', 'model_wrapper_cfg',
    'runner_type', 'strategy', 'tta_model', 'tta_pipeline', 'trust_checkpoint',
    'load_strict', 'allow_non_finite_weights'
} | set(inspect.signature(Runner).parameters) - {'cfg'}

# Every kind of mmengine's registries: mmseg's (which falls back to its
# parent, mmengine's) where mmseg has one, else mmengine's (FUNCTIONS).
REGISTRIES = [
    getattr(mmseg_registry, name, registry)
    for name, registry in vars(mmengine_registry).items()
    if isinstance(registry, Registry)
]

# Keys that the builders read beside the arguments of the built class:
# mmengine's registry, mmcv's build_norm_layer, build_optim_wrapper.
BUILDER_KEYS = {'type', '_scope_', '_delete_', 'requires_grad', 'constructor',
                'paramwise_cfg'}


def translate_legacy_keys(cfg: Config,
                          options: dict) -> Tuple[dict, List[str]]:
    """``options`` (a ``DictAction`` result for ``cfg``) with the mmseg 0.x
    keys of :data:`LEGACY_KEYS` at their 1.x places, and a note per
    translated key."""
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
        notes.append(f'{key}={value} is an mmseg 0.x key, set as '
                     f'{", ".join(places) or "nothing (not in this config)"}')
    return translated, notes


def check_override_keys(cfg: Config, options: dict) -> None:
    """Refuse overrides of keys that nothing reads, and ``type`` values
    that no registry of mmseg's or mmengine's holds.

    Each key is followed into the config to its first part that the config
    lacks, and on into the new dicts below it. Such a part passes when the
    dict it goes into takes it: at the top level a runner key; in a dict
    with a ``type`` (a ``type`` override in ``options`` counts) an argument
    of that class, in ``randomness`` one of ``Runner.set_randomness``. Where
    the accepted names cannot be told (a class taking ``**kwargs``, a dict
    without a ``type``), only a near-miss of a key the dict has is refused.

    Args:
        cfg (Config): the config before the overrides.
        options (dict): ``DictAction`` result (``{'a.b': value}``).

    Raises:
        ValueError: naming the key and the closest accepted names (or
            registered types).
    """
    tree = cfg.to_dict()
    for key, value in options.items():
        if key.rpartition('.')[2] == 'type' and isinstance(value, str):
            _check_type(key, value)
        node, parts = tree, key.split('.')
        for depth, part in enumerate(parts):
            if isinstance(node, (list, tuple)) and part.isdigit():
                node = node[int(part)] if int(part) < len(node) else None
            elif isinstance(node, dict) and part in node:
                node = node[part]
            elif not isinstance(node, dict):
                break  # a value is replaced: mmengine's merge decides
            else:
                _check_new_key(key, '.'.join(parts[:depth]), part, node,
                               options)
                node = {}  # new below


def _check_new_key(key: str, place: str, name: str, node: dict,
                   options: dict) -> None:
    """Refuse ``name``, new in the dict ``node`` at ``place``, unless the
    class that dict builds takes it (see :func:`check_override_keys`)."""
    type_ = options.get(f'{place}.type', node.get('type'))
    accepted = RUNNER_KEYS if not place else _init_args(
        Runner.set_randomness if place == 'randomness' else type_)
    known = set(node) | BUILDER_KEYS
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
    raise ValueError(
        f'config key {key} does not exist and {where} takes no {name!r}' +
        (f'; closest: {", ".join(close)}' if close else '') +
        '. A misspelt key would be added and never read, so it is refused')


def _check_type(key: str, name: str) -> None:
    """Refuse the type ``name`` of ``key`` unless a registry holds it."""
    if _registered(name) is not None:
        return
    names = {n for r in REGISTRIES
             for n in (*r.module_dict, *getattr(r.parent, 'module_dict', ()))}
    close = difflib.get_close_matches(name, sorted(names), n=3)
    raise ValueError(
        f'config key {key}: {name!r} is not registered' +
        (f'; closest: {", ".join(close)}' if close else '') +
        ' (a type of another package: is it in custom_imports?)')


def _registered(name: str) -> Any:
    """What the first of :data:`REGISTRIES` with ``name`` builds, or
    None."""
    return next(filter(None, (r.get(name) for r in REGISTRIES)), None)


def _init_args(type_: Any) -> Optional[Set[str]]:
    """Argument names of what ``type_`` builds; None when they cannot be
    told (no type, not registered, ``**kwargs``)."""
    if isinstance(type_, str):
        type_ = _registered(type_)
    try:
        params = inspect.signature(type_).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}
