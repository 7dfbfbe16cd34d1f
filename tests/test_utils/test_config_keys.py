"""--cfg-options keys that nothing reads: mmseg 0.x keys are translated,
typos and unknown settings are refused with the closest known keys;
load_config's custom_imports, syntax errors and dataloaders without
workers."""
import pytest
from mmengine.config import Config
from mmseg.registry import MODELS

from regproxy.utils import load_config
from regproxy.utils.config_keys import (LEGACY_KEYS, check_override_keys,
                                        translate_legacy_keys)
from tests.conformance import CONFIG_DIR
from tests.tiny_models import tiny_segmentor_cfg

T16_ADE = str(CONFIG_DIR / 'regproxy_ade20k' /
              'regproxy-t16-sub4+implicit-mid-4+512x512+160k+adamw-poly+'
              'ade20k.py')


@pytest.fixture(scope='module')
def cfg():
    return Config.fromfile(T16_ADE)


def test_legacy_keys_reach_their_1x_places():
    notes = []
    cfg = load_config(T16_ADE, {
        'data.samples_per_gpu': 4,
        'data.workers_per_gpu': 0,
        'optimizer.lr': 1e-4,
        'optimizer.weight_decay': 0.05,
        'runner.max_iters': 100,
        'evaluation.interval': 50,
        'checkpoint_config.interval': 25,
        'log_config.interval': 5,
        'model.pretrained': 'vit.pth',
    },
                      notes=notes)
    assert cfg.train_dataloader.batch_size == 4
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        # torch refuses persistent workers without workers
        assert (loader.num_workers, loader.persistent_workers) == (0, False)
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == (100, 50)
    assert cfg.default_hooks.checkpoint.interval == 25
    assert cfg.default_hooks.logger.interval == 5
    assert cfg.model.backbone.pretrained == 'vit.pth'
    assert notes[0] == ('data.samples_per_gpu=4 is an mmseg 0.x key, set as '
                        'train_dataloader.batch_size')
    assert len([n for n in notes if '0.x key' in n]) == len(LEGACY_KEYS)


def test_later_overrides_win_over_translated_ones():
    cfg = load_config(T16_ADE, {'data.samples_per_gpu': 4,
                                'train_dataloader.batch_size': 8})
    assert cfg.train_dataloader.batch_size == 8


def test_legacy_key_without_a_place():
    small = Config(dict(train_dataloader=dict(batch_size=2)))
    translated, notes = translate_legacy_keys(small, {'optimizer.lr': 0.1})
    assert translated == {}
    assert 'not in this config' in notes[0]


@pytest.mark.parametrize('key, message', [
    ('model.backbone.embed_dim', "model.backbone (RegionProxyViT) takes no "
     "'embed_dim'; closest: embed_dims"),
    ('model.test_cfg.strid', "model.test_cfg takes no 'strid'; closest: "
     'stride'),
    ('load_form', "the top level takes no 'load_form'; closest: load_from"),
    ('train_dataloader.batchsize', 'closest: batch_size'),
    ('randomness.sed', "randomness takes no 'sed'; closest: seed"),
    ('default_hooks.checkpont.interval', 'closest: checkpoint'),
    ('optim_wrapper.optimizer.weight_dacay', 'closest: weight_decay'),
    ('optim_wrapper.max_consecutive_skips', 'OptimWrapper'),
    ('data.samples_per_gpus', "the top level takes no 'data'"),
])
def test_unknown_keys_are_refused_naming_the_closest(cfg, key, message):
    with pytest.raises(ValueError, match='does not exist') as error:
        check_override_keys(cfg, {key: 1})
    assert message in str(error.value)
    assert key in str(error.value)


@pytest.mark.parametrize('key, value, message', [
    ('model.decode_head.type', 'ProxyHed', 'closest: ProxyHead'),
    ('optim_wrapper.optimizer.type', 'AdamX', 'closest: Adam'),
    ('model.backbone.type', 'NoSuchThing', 'custom_imports'),
])
def test_unregistered_types_are_refused_naming_the_closest(
        cfg, key, value, message):
    with pytest.raises(ValueError, match=f"config key {key}: '{value}' is "
                       'not registered') as error:
        check_override_keys(cfg, {key: value})
    assert message in str(error.value)


@pytest.mark.parametrize(
    'options',
    [
        {
            'model.backbone.embed_dims': 192
        },  # exists
        {
            'model.backbone.pretrained': 'vit.pth'
        },  # an argument of the class
        {
            'model.backbone.with_cp': True
        },
        {
            'model.backbone.norm_cfg.requires_grad': False
        },  # build_norm_layer's
        {
            'model.decode_head.use_unfold': True
        },  # ProxyHead, then its base
        {
            'optim_wrapper.type': 'AmpOptimWrapper',
            'optim_wrapper.loss_scale': 'dynamic'
        },  # the new type's argument
        {
            'optim_wrapper.accumulative_counts': 4
        },
        {
            'train_dataloader.dataset.pipeline.0.ignore_empty': True
        },
        {
            'train_dataloader.pin_memory': True
        },
        {
            'experiment_name': 'run0',
            'visualizer.name': 'vis0'
        },
        {
            'randomness.seed': 0,
            'randomness.deterministic': True
        },
        {
            'env_cfg.dist_cfg.timeout': 60
        },  # free settings: not checked
        {
            'test_cfg.fp16': True
        },
        {
            'model.backbone.init_cfg.type': 'Pretrained',
            'model.backbone.init_cfg.checkpoint': 'x.pth'
        },
        {
            'compile': True
        },
        {
            'model.decode_head.type': 'mmseg.FCNHead',
            'optim_wrapper.optimizer.type': 'SGD',
            'visualizer.vis_backends.0.type': 'TensorboardVisBackend',
            'train_dataloader.collate_fn.type': 'pseudo_collate'
        },  # registered in mmseg's registries or mmengine's (FUNCTIONS)
    ])
def test_keys_that_something_reads_pass(cfg, options):
    check_override_keys(cfg, options)


def test_load_config_ends_the_script_with_the_message():
    with pytest.raises(SystemExit, match='closest: embed_dims'):
        load_config(T16_ADE, {'model.backbone.embed_dim': 192})


@pytest.mark.parametrize('key, value, loader', [
    ('train_dataloader.batch_size', 0, 'train_dataloader'),
    ('test_dataloader.batch_size', -2, 'test_dataloader'),
    ('val_dataloader.batch_size', 1.5, 'val_dataloader'),
    ('data.samples_per_gpu', 0, 'train_dataloader')])
def test_a_batch_size_below_one_ends_the_script(key, value, loader):
    with pytest.raises(SystemExit, match=f'{loader}.batch_size must be a '
                       f'positive integer, got {value}'):
        load_config(T16_ADE, {key: value})


@pytest.mark.parametrize('key', [
    'train_dataloader.num_workers', 'data.workers_per_gpu'])
def test_no_workers_means_no_persistent_workers(key):
    """torch's DataLoader refuses persistent_workers=True without workers;
    the 1.x key and the 0.x key both set it off, with a note."""
    notes = []
    cfg = load_config(T16_ADE, {key: 0}, notes=notes)
    assert cfg.train_dataloader.persistent_workers is False
    assert ('train_dataloader.num_workers=0: persistent_workers set to False'
            ' (there are no workers to keep).') in notes
    # the other loaders keep theirs unless they lose their workers too
    expected = key.startswith('data.')
    assert (cfg.val_dataloader.persistent_workers is False) == expected


@pytest.mark.parametrize('imports', [
    "['tests.registers_a_hook']",
    "'tests.registers_a_hook'",
    "dict(imports=['tests.registers_a_hook'], allow_failed_imports=False)",
])
def test_custom_imports_in_both_forms(tmp_path, imports, monkeypatch):
    import sys
    from mmengine.hooks import Hook
    from mmseg.registry import HOOKS
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / 'tests_hook_module.py').write_text(
        'from mmengine.hooks import Hook\n'
        'from mmseg.registry import HOOKS\n'
        '@HOOKS.register_module(force=True)\n'
        'class ImportedHook(Hook):\n'
        '    pass\n')
    imports = imports.replace('tests.registers_a_hook', 'tests_hook_module')
    path = tmp_path / 'imports.py'
    path.write_text(f"_base_ = ['{T16_ADE}']\ncustom_imports = {imports}\n")
    sys.modules.pop('tests_hook_module', None)
    cfg = load_config(str(path))
    assert issubclass(HOOKS.get('ImportedHook'), Hook)
    # the runner (and a dumped config) see mmengine's form
    assert cfg.custom_imports['imports'] in (['tests_hook_module'],
                                            'tests_hook_module')


def test_custom_imports_that_fail_name_the_module(tmp_path):
    path = tmp_path / 'missing.py'
    path.write_text(f"_base_ = ['{T16_ADE}']\n"
                    "custom_imports = ['no_such_module_here']\n")
    with pytest.raises(SystemExit, match='no_such_module_here'):
        load_config(str(path))


def test_segmentor_refuses_unknown_test_cfg_keys():
    """Also when the config file (not the command line) has the typo."""
    cfg = tiny_segmentor_cfg(mode='slide')
    cfg.test_cfg['strid'] = (48, 48)
    with pytest.raises(ValueError,
                       match="test_cfg.strid is not a setting "
                       "of PaddedSlideEncoderDecoder: did you mean 'stride'"):
        MODELS.build(cfg)


# Syntax, before anything is built ------------------------------------------


def test_a_syntax_error_names_the_file_line_and_text(tmp_path):
    """mmengine parses config files without their names ("<unknown>")."""
    base = tmp_path / 'base.py'
    base.write_text('a = 1\nb = dict(c=2\nd = 3\n')
    leaf = tmp_path / 'leaf.py'
    leaf.write_text("_base_ = ['base.py']\ne = 4\n")
    for path in (base, leaf):
        with pytest.raises(SystemExit) as exit:
            load_config(str(path))
        assert str(exit.value) == (
            f"error: {path} (or one of its _base_ files), line 2: '(' was "
            'never closed: b = dict(c=2')


def test_a_missing_config_or_base_file_is_named(tmp_path):
    leaf = tmp_path / 'leaf.py'
    leaf.write_text("_base_ = ['gone.py']\n")
    for path, missing in ((tmp_path / 'nothing.py', tmp_path / 'nothing.py'),
                          (leaf, tmp_path / 'gone.py')):
        with pytest.raises(SystemExit) as exit:
            load_config(str(path))
        assert str(exit.value) == (
            f'error: cannot read config {path}: [Errno 2] No such file or '
            f"directory: '{missing}'")
