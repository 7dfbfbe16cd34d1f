"""tools/analysis/benchmark.py, tools/analysis/get_flops.py, tools/demo.py
and tools/deployment/pytorch2onnx.py on a tiny randomly initialised
model."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 4
PALETTE = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]]

TINY_CONFIG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['regproxy'], allow_failed_imports=False)
crop_size = (64, 64)
model = dict(
    type='PaddedSlideEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
        seg_pad_val=255),
    backbone=dict(
        type='RegionProxyViT', img_size=crop_size, patch_size=16,
        embed_dims=32, num_layers=2, num_heads=2, out_indices=(0, 1)),
    decode_head=dict(
        type='ProxyHead', in_channels=(32, 32), in_index=(0, 1), channels=16,
        num_classes=4, norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss'), init_cfg=None),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(48, 48)))
test_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='PackSegInputs')
]
"""


BENCHMARK = 'tools/analysis/benchmark.py'
benchmark = load_script(BENCHMARK)
demo = load_script('tools/demo.py')
get_flops = load_script('tools/analysis/get_flops.py')
pytorch2onnx = load_script('tools/deployment/pytorch2onnx.py')
vit2regproxy = load_script('tools/model_converters/vit2regproxy.py')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(config path, checkpoint path) of a tiny randomly initialised model
    whose checkpoint carries a palette, as a trained one would."""
    from mmseg.registry import MODELS
    root = tmp_path_factory.mktemp('tiny')
    config = root / 'tiny_regproxy.py'
    config.write_text(TINY_CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(config).model)
    model.init_weights()
    # Spread the head's affinities so the region map is not a plain grid.
    torch.nn.init.normal_(model.decode_head.affinity_head[1].conv.weight,
                          std=0.5)
    checkpoint = root / 'tiny.pth'
    meta = dict(
        dataset_meta=dict(
            classes=tuple(f'c{i}' for i in range(NUM_CLASSES)),
            palette=PALETTE))
    torch.save(dict(state_dict=model.state_dict(), meta=meta), checkpoint)
    return str(config), str(checkpoint)


# --------------------------------------------------------------- benchmark


def test_straightforward_cfg_uses_mmseg_vit_and_unfold_head(tiny):
    model_cfg = Config.fromfile(tiny[0]).model.to_dict()
    cfg = benchmark.straightforward_cfg(model_cfg)
    assert cfg['backbone']['type'] == 'mmseg.VisionTransformer'
    assert cfg['backbone']['final_norm'] is True  # ours' default, not mmseg's
    assert cfg['decode_head']['use_unfold'] is True
    assert cfg['decode_head']['fused_loss'] is False
    assert model_cfg['backbone']['type'] == 'RegionProxyViT'  # not mutated
    for bad in (dict(deit=True), dict(embed_type='vit_small_r26_s32_384'),
                dict(out_indices=(-1, 1))):
        broken = dict(model_cfg, backbone=dict(model_cfg['backbone'], **bad))
        with pytest.raises(ValueError):
            benchmark.straightforward_cfg(broken)


@pytest.mark.parametrize('paths', [benchmark.PATHS, benchmark.HEAD_PATHS])
def test_both_paths_share_weights_and_logits(tiny, paths):
    cfg = Config.fromfile(tiny[0])
    cpu = torch.device('cpu')
    models = {path: benchmark.build_model(cfg, path, cpu) for path in paths}
    # Strict load: every name of ours exists in mmseg's ViT and vice versa.
    models[paths[1]].load_state_dict(models[paths[0]].state_dict())
    assert models[paths[1]].decode_head.use_unfold
    inputs = benchmark.make_inputs(2, (80, 48), cpu)
    diff, scale = benchmark.compare_logits(models, inputs)
    assert scale > 0
    assert diff <= 1e-5 * scale


def test_benchmark_prints_both_paths_and_ratios(tiny, capsys):
    common = ['--iters', '1', '--warmup', '0', '--dtypes', 'float32']
    benchmark.main([tiny[0], tiny[1], '--shape', '64', '96', *common])
    out = capsys.readouterr().out
    assert re.search(r'max \|diff\| \S+ \(max \|logit\|', out)
    for path in benchmark.PATHS:
        assert re.search(rf'64x96 +infer +float32 +{path}( +[\d.]+){{4}}',
                         out)
    assert re.search(r'infer +float32 +speed x[\d.]+ +memory x[\d.]+', out)


def test_benchmark_head_only_prints_both_forms(tiny, capsys):
    benchmark.main([tiny[0], '--head-only', '--shape', '64', '64',
                    '--iters', '1', '--warmup', '0', '--dtypes', 'float32',
                    '--train'])
    out = capsys.readouterr().out
    assert 'K=4' in out
    for mode in ('infer', 'train'):
        for path in benchmark.HEAD_PATHS:
            assert re.search(
                rf'64x64 +{mode} +float32 +{path}( +[\d.]+){{4}}', out)


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
        assert re.search(rf'64x64 +train +float32 +{path}( +[\d.]+){{4}}',
                         out)
    assert ' infer ' not in out  # a frozen backbone infers as a full one
    assert re.search(r'train +float32 +speed x[\d.]+ +memory x[\d.]+', out)


def test_benchmark_refuses_two_reference_paths(tiny):
    with pytest.raises(SystemExit):
        benchmark.main([tiny[0], '--head-only', '--compile'])


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


# --------------------------------------------------------------- get_flops


def test_get_flops_splits_off_attention_per_layer(tiny):
    result = get_flops.analyse(tiny[0], (64, 96))
    model = benchmark.build_model(Config.fromfile(tiny[0]), 'ours',
                                  torch.device('cpu'))
    assert result['params'] == sum(p.numel() for p in model.parameters())
    # Each of the 2 layers: qkv and output projections, QK^T and AV, over
    # the 4x6 patch tokens and the cls token, width 32.
    tokens, width = 4 * 6 + 1, 32
    attention = 2 * (4 * tokens * width**2 + 2 * tokens**2 * width)
    assert result['full'] - result['paper'] == attention
    assert result['paper'] > 0


# -------------------------------------------------------------------- demo


def test_strongest_region_maps_neighbours_to_absolute_tokens():
    h, w = 3, 4
    affinity = torch.zeros(9, 2, 2, h, w)
    affinity[4] = 1  # every sub-pixel prefers its own token ...
    affinity[8, 1, 1, 0, 0] = 2  # ... but one the bottom-right neighbour
    regions = demo.strongest_region(affinity)
    assert regions.shape == (h * 2, w * 2)
    expected = torch.arange(h * w).view(h, w).repeat_interleave(
        2, 0).repeat_interleave(2, 1)
    expected[1, 1] = 1 * w + 1
    assert torch.equal(regions, expected)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_demo_writes_three_pictures_of_the_image(tiny, tmp_path, dtype):
    skimage_data = pytest.importorskip('skimage.data')
    photo = skimage_data.astronaut()  # RGB, 512x512, ships with skimage
    image_path = tmp_path / 'astronaut.png'
    cv2.imwrite(str(image_path), photo[..., ::-1])
    paths = demo.main([
        str(image_path), tiny[0], tiny[1], '--out',
        str(tmp_path / 'out'), '--device', 'cpu', '--dtype', dtype
    ])
    assert [Path(p).name for p in paths] == [
        'astronaut_seg.png', 'astronaut_regions.png', 'astronaut_tokens.png'
    ]
    seg, regions, tokens = (cv2.imread(p)[..., ::-1] for p in paths)
    for picture in (seg, regions, tokens):
        assert picture.shape == photo.shape
        assert picture.std() > 10  # not blank
        assert np.abs(picture.astype(int) - photo).mean() > 1  # drawn on
    # The overlay mixes the photo with palette colours only.
    mixed = {
        tuple(np.round(0.5 * photo[0, 0] + 0.5 * np.array(c)).astype(int))
        for c in PALETTE
    }
    assert tuple(seg[0, 0]) in mixed
    # Region outlines are drawn in their own colour over part of the photo.
    lines = np.all(regions == demo.OUTLINE_COLOR, axis=-1)
    assert lines.any()
    assert lines.mean() < 0.5


# -------------------------------------------------------------------- onnx


def test_onnx_export_matches_pytorch(tiny, tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'tiny.onnx'
    worst = pytorch2onnx.main(
        [tiny[0], tiny[1], '--out',
         str(out), '--shape', '64', '64', '--dynamic'])
    assert out.is_file()
    assert worst <= 1e-4
    printed = capsys.readouterr().out
    # 64x64 is the training grid, so the graph was traced one patch larger;
    # checked: the export size, another batch at an odd size, the traced size.
    assert len(re.findall(r'max \|onnxruntime - pytorch\|', printed)) == 3
    assert 'input 2x3x73x59' in printed
    assert 'input 1x3x80x80' in printed


def test_onnx_nan_difference_fails(tiny, tmp_path, monkeypatch):
    pytest.importorskip('onnxruntime')

    class NaNSession:
        """An onnxruntime session whose logits are all NaN."""

        def __init__(self, *args, **kwargs):
            pass

        def run(self, names, feeds):
            batch, _, h, w = feeds['img'].shape
            return [np.full((batch, NUM_CLASSES, h, w), np.nan, np.float32)]

    monkeypatch.setattr(pytorch2onnx.ort, 'InferenceSession', NaNSession)
    with pytest.raises(SystemExit, match='relative difference nan'):
        pytorch2onnx.main([tiny[0], tiny[1], '--out',
                           str(tmp_path / 'm.onnx'), '--shape', '64', '64'])


# ------------------------------------------------- crafted checkpoint files


@pytest.fixture()
def crafted(tiny, tmp_path):
    """(checkpoint that creates ``marker`` when unpickled, marker)."""
    from tests.test_engine.test_checkpoint import WritesMarker
    marker = tmp_path / 'marker'
    content = torch.load(tiny[1], weights_only=True)
    content['meta']['note'] = WritesMarker(marker)
    path = tmp_path / 'downloaded.pth'
    torch.save(content, path)
    return path, marker


def test_tools_refuse_crafted_checkpoints(tiny, crafted, tmp_path):
    path, marker = crafted
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((32, 48, 3), np.uint8))
    runs = [
        lambda: demo.main([str(image), tiny[0], str(path), '--out',
                           str(tmp_path / 'demo'), '--device', 'cpu']),
        lambda: pytorch2onnx.main([tiny[0], str(path), '--out',
                                   str(tmp_path / 'm.onnx')]),
        lambda: benchmark.main([tiny[0], str(path), '--iters', '1',
                                '--dtypes', 'float32']),
        lambda: vit2regproxy.main([str(path), str(tmp_path / 'c.pth'),
                                   '--config', tiny[0]]),
    ]
    for run in runs:
        with pytest.raises(SystemExit) as error:
            run()
        assert 'downloaded.pth' in str(error.value)
        assert 'io.open' in str(error.value)
        assert '--trust-checkpoint' in str(error.value)
        assert not marker.exists()
    demo.main([str(image), tiny[0], str(path), '--out',
               str(tmp_path / 'demo'), '--device', 'cpu',
               '--trust-checkpoint'])
    assert marker.exists()


def test_backbone_pretrained_refuses_crafted_file(tiny, crafted):
    from regproxy.engine import CheckpointError
    from regproxy.models.backbones import RegionProxyViT
    path, marker = crafted
    backbone = RegionProxyViT(img_size=64, embed_dims=32, num_layers=2,
                              num_heads=2, out_indices=(0, 1),
                              pretrained=str(path))
    with pytest.raises(CheckpointError, match='io.open'):
        backbone.init_weights()
    assert not marker.exists()


def test_demo_reads_the_image_as_training_does(tiny, tmp_path):
    """A cut JPEG (which cv2 fills with grey) stops the demo with the file
    named; a JPEG with an EXIF orientation tag is pictured as stored."""
    from PIL import Image
    ok, data = cv2.imencode('.jpg', np.full((64, 96, 3), 128, np.uint8))
    cut = tmp_path / 'cut.jpg'
    cut.write_bytes(data.tobytes()[:len(data) // 2])
    args = [tiny[0], tiny[1], '--out', str(tmp_path / 'out'), '--device',
            'cpu']
    with pytest.raises(SystemExit, match=rf'error: cannot read image {cut}: '
                       r'.*\(truncated\)'):
        demo.main([str(cut)] + args)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = tmp_path / 'tagged.jpg'
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(
        tagged, exif=exif.tobytes())
    for path in demo.main([str(tagged)] + args):
        assert cv2.imread(path).shape == (64, 96, 3)


def test_benchmark_stops_on_non_finite_logits(tiny, monkeypatch):
    """A NaN weight (copied into both paths) gives NaN logits and a NaN
    difference: the benchmark stops, naming the config and the weights."""
    build_model = benchmark.build_model

    def with_nan(cfg, path, device):
        model = build_model(cfg, path, device)
        with torch.no_grad():
            model.decode_head.mlp[0][0].weight[0, 0] = float('nan')
        return model

    monkeypatch.setattr(benchmark, 'build_model', with_nan)
    with pytest.raises(SystemExit) as error:
        benchmark.main([tiny[0], '--iters', '1', '--dtypes', 'float32'])
    assert str(error.value) == (
        f'error: {tiny[0]}: the float32 logits hold NaN or inf with the '
        'random initial weights: check the weights for non-finite values')
