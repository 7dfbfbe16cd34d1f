"""tools/analysis/benchmark.py on a tiny randomly initialised model."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
BENCHMARK = 'tools/analysis/benchmark.py'
benchmark = load_script(BENCHMARK)


def test_straightforward_cfg_uses_mmseg_vit_and_unfold_head(tiny):
    model_cfg = Config.fromfile(tiny[0]).model.to_dict()
    cfg = benchmark.straightforward_cfg(model_cfg)
    assert cfg['backbone']['type'] == 'mmseg.VisionTransformer'
    assert cfg['backbone']['final_norm'] is True  # ours' default, not mmseg's
    assert cfg['decode_head']['use_unfold'] is True
    assert cfg['decode_head']['fused_loss'] is False
    assert model_cfg['backbone']['type'] == 'RegionProxyViT'  # not mutated


@pytest.mark.parametrize('bad, expected', [
    ("deit=True", 'do not fit straightforward'),
    ("mlp_ratio=4.5", 'do not fit straightforward'),
    ("out_indices=(-1, 1)", 'reads out_indices=-1 as the last layer'),
])
def test_benchmark_refuses_a_backbone_mmseg_cannot_mirror(
        tiny, tmp_path, bad, expected):
    config = tmp_path / 'mirror.py'
    config.write_text(f'_base_ = {tiny[0]!r}\n'
                      f'model = dict(backbone=dict({bad}))\n')
    with pytest.raises(SystemExit) as error:
        benchmark.main([str(config), '--iters', '1', '--dtypes', 'float32'])
    assert str(error.value).startswith(f'error: {config}: ')
    assert expected in str(error.value)


def test_ours_and_straightforward_share_weights_and_logits(tiny):
    cfg = Config.fromfile(tiny[0])
    cpu = torch.device('cpu')
    ours, straightforward = (benchmark.build_model(cfg, path, cpu)
                             for path in benchmark.PATHS[:2])
    # Strict load: every name of ours exists in mmseg's ViT and vice versa.
    straightforward.load_state_dict(ours.state_dict())
    assert straightforward.decode_head.use_unfold
    inputs = benchmark.make_inputs(2, (80, 48), cpu)
    diff, scale = benchmark.compare_logits((ours, straightforward), inputs)
    assert scale > 0
    assert diff <= 1e-5 * scale


def test_segmenter_peer_has_the_width_of_ours(tiny):
    """mmseg's Segmenter of the tiny config's width (32), depth (2), heads
    (2), patch (16) and classes (4), its mask head on the last layer."""
    from mmseg.models.decode_heads import SegmenterMaskTransformerHead
    cfg = Config.fromfile(tiny[0])
    peer = benchmark.build_model(cfg, 'segmenter', torch.device('cpu'))
    backbone, head = peer.backbone, peer.decode_head
    assert type(backbone).__name__ == 'VisionTransformer'
    assert isinstance(head, SegmenterMaskTransformerHead)
    assert backbone.cls_token.shape == (1, 1, 32)
    assert len(backbone.layers) == 2 and backbone.out_indices == [1]
    assert backbone.patch_embed.projection.kernel_size == (16, 16)
    assert backbone.layers[0].attn.attn.num_heads == 2
    assert head.cls_emb.shape == (1, 4, 32) and len(head.layers) == 2
    metas = [dict(img_shape=(80, 48))]
    with torch.no_grad():
        logits = peer.eval().encode_decode(torch.randn(1, 3, 80, 48), metas)
    assert logits.shape == (1, 4, 80, 48)


def test_benchmark_prints_the_machine_all_paths_and_ratios(tiny, capsys):
    common = ['--iters', '2', '--warmup', '0', '--dtypes', 'float32']
    benchmark.main([tiny[0], tiny[1], '--shape', '64', '96', *common])
    out = capsys.readouterr().out
    with open('/proc/cpuinfo') as f:
        info = f.read()
    name = re.search(r'^model name\s*:\s*(.*)$', info, re.M).group(1)
    flags = re.search(r'^flags\s*:(.*)$', info, re.M).group(1).split()
    header = out.splitlines()[0]
    family = re.search(r'^cpu family\s*:\s*(\d+)$', info, re.M).group(1)
    model = re.search(r'^model\s*:\s*(\d+)$', info, re.M).group(1)
    assert header.startswith(f'CPU: {name} (family {family} model {model}; ')
    for flag in benchmark.CPU_FLAGS:
        assert f'{flag} {"yes" if flag in flags else "no"}' in header
    assert f'torch {torch.__version__}' in header
    assert re.search(r'max \|diff\| \S+ \(max \|logit\|', out)
    rows = re.findall(r'^64x96 infer float32 +(\S+)( +[\d.]+){3}(.*)$', out,
                      re.M)
    assert [row[0] for row in rows] == list(benchmark.PATHS)
    assert rows[0][2] == ''  # ours: the ratios are over it
    for row in rows[1:]:
        assert re.fullmatch(r' +x[\d.]+ time, x[\d.]+ memory', row[2])


def test_dtype_ratio_is_the_median_of_back_to_back_pairs(capsys):
    """Sequential medians would give 4 / 1 = x4; the pairs give 2, 4, 3."""
    def result(mode, dtype, ours):
        return dict(case=f'8x8 {mode} {dtype}', mode=mode, batch=1,
                    times=dict(ours=ours, other=[1., 1., 1.]),
                    peaks=dict(ours=2**20, other=2**21))
    benchmark.print_comparison([
        result('infer', 'float32', [2., 4., 6.]),
        result('infer', 'bfloat16', [1., 1., 2.]),
        result('train', 'float32', [3., 3., 3.]),
        result('train', 'bfloat16', [2., 2., 2.])])
    out = capsys.readouterr().out
    assert 'ours: 8x8 infer bfloat16 runs x3.00 as fast as float32' in out
    assert 'ours: 8x8 train bfloat16 runs x1.50 as fast as float32' in out
    assert re.search(r'8x8 infer float32 +other( +[\d.]+){3} +x0\.25 time, '
                     r'x2\.00 memory', out)


def test_benchmark_alternates_the_dtypes_and_prints_their_ratio(tiny,
                                                                capsys):
    benchmark.main([tiny[0], '--shape', '32', '32', '--iters', '2',
                    '--warmup', '0', '--dtypes', 'float32', 'bfloat16'])
    out = capsys.readouterr().out
    assert re.search(r'^ours: 32x32 infer bfloat16 runs x[\d.]+ as fast as '
                     r'float32$', out, re.M)


def test_benchmark_frozen_times_training_with_a_frozen_backbone(tiny,
                                                                 capsys):
    cfg = Config.fromfile(tiny[0])
    frozen = benchmark.build_model(cfg, 'frozen', torch.device('cpu'))
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.decode_head.parameters())
    benchmark.main([tiny[0], '--frozen', '--shape', '64', '64', '--iters',
                    '1', '--warmup', '0', '--dtypes', 'float32'])
    out = capsys.readouterr().out
    for path in benchmark.FROZEN_PATHS:
        assert re.search(rf'64x64 train float32 +{path}( +[\d.]+){{3}}',
                         out)
    assert ' infer ' not in out  # a frozen backbone infers as a full one
    assert re.search(r'train float32 +full( +[\d.]+){3} +x[\d.]+ time, '
                     r'x[\d.]+ memory', out)


def test_benchmark_class_maps_times_predict_without_and_with_logits(
        tiny, capsys):
    cfg = Config.fromfile(tiny[0])
    for path, keeps_logits in zip(benchmark.CLASS_MAP_PATHS, (False, True)):
        model = benchmark.build_model(cfg, path, torch.device('cpu'))
        assert model.test_cfg.return_logits is keeps_logits
    benchmark.main([tiny[0], '--class-maps', '--shape', '64', '96',
                    '--iters', '1', '--warmup', '0', '--dtypes', 'float32'])
    out = capsys.readouterr().out
    assert ('float32 class maps, class_maps vs logits: 100.00% of the '
            'pixels equal') in out
    for path in benchmark.CLASS_MAP_PATHS:
        assert re.search(rf'^64x96 predict float32 +{path}( +[\d.]+){{3}}',
                         out, re.M)
    assert ' infer ' not in out
    with pytest.raises(SystemExit):
        benchmark.main([tiny[0], '--class-maps', '--train'])


def test_benchmark_class_maps_stop_on_a_disagreement(tiny, monkeypatch):
    monkeypatch.setattr(benchmark, 'compare_class_maps',
                        lambda models, images: 0.999)
    with pytest.raises(SystemExit) as error:
        benchmark.main([tiny[0], '--class-maps', '--iters', '1',
                        '--dtypes', 'float32'])
    assert str(error.value) == (
        f'error: {tiny[0]}: predict() gives other class maps without the '
        'logits than with them on 0.10% of the pixels; return_logits=False '
        'must not change predictions')


def test_predict_step_runs_the_inference_batch(tiny):
    args = benchmark.parse_args([tiny[0], '--class-maps', '--batch', '3'])
    args.shape = (32, 32)
    batches = []

    class Recorder(torch.nn.Module):
        def predict(self, images):
            batches.append(len(images))

    benchmark.make_step(args, Recorder(), 'predict', 'float32')()
    assert batches == [3]  # not --train-batch


def test_benchmark_takes_cfg_options(tiny, monkeypatch):
    built = []
    build_model = benchmark.build_model
    monkeypatch.setattr(
        benchmark, 'build_model',
        lambda cfg, path, device: built.append(cfg) or build_model(
            cfg, path, device))
    benchmark.main([tiny[0], '--class-maps', '--shape', '32', '32',
                    '--iters', '1', '--warmup', '0', '--dtypes', 'float32',
                    '--cfg-options', 'model.test_cfg.mode=whole'])
    # the tiny config slides
    assert {cfg.model.test_cfg.mode for cfg in built} == {'whole'}
    with pytest.raises(SystemExit) as error:  # a misspelt key is refused
        benchmark.main([tiny[0], '--cfg-options', 'model.test_cfg.mdoe=x'])
    assert 'mdoe' in str(error.value)


def test_benchmark_refuses_two_reference_paths(tiny):
    with pytest.raises(SystemExit):
        benchmark.main([tiny[0], '--frozen', '--compile'])


def test_peak_memory_sees_a_known_allocation():
    """In a fresh process with the worker's fixed mmap threshold, as the
    benchmark measures (a long-lived process may serve the tensor from
    memory it already holds)."""
    size = 64 * 2**20
    code = (
        'import runpy, torch\n'
        f'bench = runpy.run_path({str(REPO / BENCHMARK)!r})\n'
        f'step = lambda: torch.ones({size // 4}, dtype=torch.float32)\n'
        "print(bench['peak_memory'](step, 2, torch.device('cpu')))\n")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    out = subprocess.run([sys.executable, '-c', code], env=env, check=True,
                         capture_output=True, text=True).stdout
    peak = int(out.split()[-1])
    assert 0.9 * size < peak < 1.3 * size


def test_steps_alternate_and_are_all_timed():
    calls = []
    steps = {name: (lambda n=name: calls.append(n)) for name in 'ab'}
    times = benchmark.time_steps(steps, iters=3, warmup=1,
                                 device=torch.device('cpu'))
    assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}
    assert calls == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']


def test_benchmark_stops_on_non_finite_logits(tiny, monkeypatch):
    """A NaN weight of ours (copied into the straightforward path) gives NaN
    logits and a NaN difference: the benchmark stops, naming the config and
    the weights."""
    build_model = benchmark.build_model

    def with_nan(cfg, path, device):
        model = build_model(cfg, path, device)
        if path == 'ours':
            with torch.no_grad():
                model.decode_head.mlp[0][0].weight[0, 0] = float('nan')
        return model

    monkeypatch.setattr(benchmark, 'build_model', with_nan)
    with pytest.raises(SystemExit) as error:
        benchmark.main([tiny[0], '--iters', '1', '--dtypes', 'float32'])
    assert str(error.value) == (
        f'error: {tiny[0]}: the float32 logits of the two paths disagree or '
        'are not finite with the random initial weights; timings would '
        'compare different models')
