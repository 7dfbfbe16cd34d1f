import pytest
from mmengine.config import Config

from regproxy.utils import launcher_world_size, plan_total_batch
from tests.conformance import CONFIG_DIR

T16_ADE = (CONFIG_DIR / 'regproxy_ade20k' /
           'regproxy-t16-sub4+implicit-mid-4+512x512+160k+adamw-poly+'
           'ade20k.py')
PUBLISHED = sorted(p for folder in ('regproxy_ade20k', 'regproxy_cityscapes')
                   for p in (CONFIG_DIR / folder).glob('*.py'))


@pytest.fixture
def cfg():
    return Config.fromfile(T16_ADE)


@pytest.mark.parametrize('path', PUBLISHED, ids=lambda p: p.stem)
def test_every_published_config_records_the_recipe_total(path):
    cfg = Config.fromfile(path)
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
    assert 8 * cfg.train_dataloader.batch_size == 16  # 8 GPUs x 2 images


def test_one_process_warns_and_names_both_remedies(cfg):
    notes, warnings = plan_total_batch(cfg, 1, None, False)
    assert notes == [
        'total batch = processes x batch_size = 1 x 2 = 2 (recipe: 16)'
    ]
    assert len(warnings) == 1
    assert "total batch 2 differs from the recipe's 16" in warnings[0]
    assert '--accumulate auto (gradient accumulation over 8' in warnings[0]
    assert '--auto-scale-lr (x 0.125' in warnings[0]
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert 'accumulative_counts' not in cfg.optim_wrapper


@pytest.mark.parametrize('processes, accumulate, expected', [(1, 'auto', 8),
                                                             (2, 'auto', 4),
                                                             (4, 'auto', 2),
                                                             (8, 'auto', 1),
                                                             (1, 3, 3)])
def test_accumulate(cfg, processes, accumulate, expected):
    notes, warnings = plan_total_batch(cfg, processes, accumulate, False)
    total = processes * 2 * expected
    if expected > 1:
        assert cfg.optim_wrapper.accumulative_counts == expected
        assert cfg.train_cfg.type == 'AccumulatingTrainLoop'
        assert notes[0] == (
            'total batch = processes x batch_size x accumulate = '
            f'{processes} x 2 x {expected} = {total} (recipe: 16)')
    else:
        assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert bool(warnings) == (total != 16)
    if total != 16:  # --accumulate 3 on one process: auto would be 8
        assert '--accumulate auto (gradient accumulation over 8' in (
            warnings[0])


def test_accumulate_auto_refuses_a_fraction(cfg):
    with pytest.raises(ValueError,
                       match='recipe total batch 16 is not a '
                       'whole multiple of processes x batch_size = 3 x 2'):
        plan_total_batch(cfg, 3, 'auto', False)
    with pytest.raises(ValueError, match='not a whole multiple'):
        plan_total_batch(cfg, 16, 'auto', False)  # 32 > 16


@pytest.mark.parametrize('processes, accumulate', [(1, None), (1, 2), (2, 4),
                                                   (16, None)])
def test_auto_scale_lr_matches_the_total_batch(cfg, processes, accumulate):
    """mmengine scales by processes x batch_size / base_batch_size; with
    accumulation the base is divided so the ratio is total / recipe."""
    notes, warnings = plan_total_batch(cfg, processes, accumulate, True)
    assert not warnings
    assert cfg.auto_scale_lr.enable
    total = processes * 2 * (accumulate or 1)
    mmengine_ratio = processes * 2 / cfg.auto_scale_lr.base_batch_size
    assert mmengine_ratio == pytest.approx(total / 16)
    assert f'x {total}/16 = {total / 16:g}' in notes[-1]


def test_flags_need_the_recipe_total_and_an_iteration_loop(cfg):
    cfg.auto_scale_lr = None
    for accumulate, scale in [('auto', False), (None, True)]:
        with pytest.raises(ValueError, match='need the recipe total'):
            plan_total_batch(cfg.copy(), 1, accumulate, scale)
    notes, warnings = plan_total_batch(cfg.copy(), 1, 2, False)
    assert notes[0].endswith('= 4') and not warnings  # no recipe to compare
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2)
    with pytest.raises(ValueError, match='has EpochBasedTrainLoop'):
        plan_total_batch(cfg, 1, 2, False)


def test_accumulative_counts_of_the_config_count_optimizer_steps(cfg):
    cfg.optim_wrapper.accumulative_counts = 8
    notes, warnings = plan_total_batch(cfg, 1, None, False)
    assert cfg.train_cfg.type == 'AccumulatingTrainLoop'
    assert not warnings and notes[0].endswith('= 16 (recipe: 16)')


def test_launcher_world_size(monkeypatch):
    assert launcher_world_size('none') == 1
    for name, value in dict(
            RANK=1, WORLD_SIZE=4, LOCAL_RANK=1, SLURM_PROCID=3,
            SLURM_NTASKS=16, SLURM_LOCALID=3, OMPI_COMM_WORLD_RANK=0,
            OMPI_COMM_WORLD_SIZE=2, OMPI_COMM_WORLD_LOCAL_RANK=0).items():
        monkeypatch.setenv(name, str(value))
    assert [launcher_world_size(name)
            for name in ('pytorch', 'slurm', 'mpi')] == [4, 16, 2]
    monkeypatch.delenv('OMPI_COMM_WORLD_RANK')
    with pytest.raises(ValueError, match='--launcher mpi: '
                       'OMPI_COMM_WORLD_RANK not set: start the processes '
                       'with mpirun'):
        launcher_world_size('mpi')
