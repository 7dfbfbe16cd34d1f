"""tools/analysis/get_flops.py, tools/demo.py and
tools/deployment/pytorch2onnx.py on a tiny randomly initialised model."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.scripts import load_script
from tests.test_tools.conftest import NUM_CLASSES, PALETTE

REPO = Path(__file__).resolve().parents[2]
benchmark = load_script('tools/analysis/benchmark.py')
demo = load_script('tools/demo.py')
get_flops = load_script('tools/analysis/get_flops.py')
pytorch2onnx = load_script('tools/deployment/pytorch2onnx.py')
vit2regproxy = load_script('tools/model_converters/vit2regproxy.py')


# --------------------------------------------------------------- get_flops


def test_get_flops_splits_off_attention_per_layer(tiny):
    from mmseg.apis import init_model
    result = get_flops.analyse(tiny[0], (64, 96))
    model = init_model(tiny[0], device='cpu')
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


def test_image_grid_cells_may_be_fractions_of_a_pixel():
    # Patch 14 with 4 x 4 sub-pixels (EVA-02 Ti/14, the shapes default):
    # cells 3.5 pixels wide, the resized image 28 x 42 shown at 56 x 84.
    cells = torch.arange(8 * 12).view(8, 12)
    grid = demo.to_image_grid(cells, 14, (4, 4), (28, 42), (56, 84))
    assert grid.shape == (56, 84)
    rows = (np.arange(56) / 2 / 3.5).astype(int)
    cols = (np.arange(84) / 2 / 3.5).astype(int)
    assert np.array_equal(grid, cells.numpy()[np.ix_(rows, cols)])
    assert grid[-1, -1] == cells[-1, -1]  # every cell shown, none beyond
    tokens = demo.to_image_grid(cells[:2, :3], 14, (1, 1), (28, 42),
                                (28, 42))
    assert np.array_equal(tokens[::14, ::14], cells[:2, :3].numpy())


@pytest.fixture(scope='module')
def astronaut(tmp_path_factory):
    """(RGB 512x512 photo, its PNG file), scikit-image's astronaut."""
    photo = pytest.importorskip('skimage.data').astronaut()
    path = tmp_path_factory.mktemp('photo') / 'astronaut.png'
    cv2.imwrite(str(path), photo[..., ::-1])
    return photo, path


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_demo_writes_three_pictures_of_the_image(tiny, tmp_path, dtype,
                                                 astronaut):
    photo, image_path = astronaut
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
    # The overlay mixes the photo with palette colours only (mmseg's
    # visualizer rounds down).
    mixed = {
        tuple((0.5 * photo[0, 0] + 0.5 * np.array(c)).astype(int))
        for c in PALETTE
    }
    assert tuple(seg[0, 0]) in mixed
    # Region outlines are drawn in their own colour over part of the photo.
    lines = np.all(regions == demo.OUTLINE_COLOR, axis=-1)
    assert lines.any()
    assert lines.mean() < 0.5


def test_demo_class_map_without_logits_is_unchanged(tiny, tmp_path,
                                                    astronaut):
    """The demo predicts with test_cfg.return_logits=False; with mmseg's
    full logits (slide windows merged, then argmax) the picture is the
    same."""
    args = [str(astronaut[1]), tiny[0], tiny[1], '--device', 'cpu']
    lean = demo.main(args + ['--out', str(tmp_path / 'lean')])[0]
    full = demo.main(args + ['--out', str(tmp_path / 'full'), '--cfg-options',
                             'model.test_cfg.return_logits=True'])[0]
    assert np.array_equal(cv2.imread(lean), cv2.imread(full))


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


# The README's default backbone family (rotary and absolute position
# embeddings) and one whose embedding is resampled with antialiasing.
TIMM_CONFIG = """
_base_ = '{base}'
model = dict(
    backbone=dict(
        _delete_=True, type='TimmRegionProxyViT', model_name='{name}',
        img_size=(56, 56), out_indices=(0, 1), timm_kwargs=dict(depth=2)),
    decode_head=dict(in_channels=({width}, {width})))
"""


@pytest.mark.parametrize('name, width', [('eva02_tiny_patch14_224', 192),
                                         ('vit_small_patch14_dinov2', 384)])
def test_onnx_export_of_timm_backbones(tiny, tmp_path, capsys, name, width):
    """timm's position embeddings export (the TorchScript tracer gave an
    unsupported antialiased resize or a graph onnxruntime refused)."""
    pytest.importorskip('onnxruntime')
    config = tmp_path / 'timm.py'
    config.write_text(TIMM_CONFIG.format(base=tiny[0], name=name,
                                         width=width))
    worst = pytorch2onnx.main([str(config), '--out', str(tmp_path / 'm.onnx'),
                               '--shape', '56', '56', '--dynamic'])
    assert worst <= 1e-4
    printed = capsys.readouterr().out
    assert all(f'input {shape}: max' in printed
               for shape in ('1x3x70x70', '1x3x56x56', '2x3x64x52'))


def test_onnx_export_and_runtime_failures_are_named(tiny, tmp_path,
                                                    monkeypatch):
    out = str(tmp_path / 'm.onnx')

    def refuse(*args, **kwargs):
        raise torch.onnx.OnnxExporterError('aten::frobnicate is not '
                                           'supported\n(details)')

    with monkeypatch.context() as patch:
        patch.setattr(pytorch2onnx.torch.onnx, 'export', refuse)
        with pytest.raises(SystemExit) as exit_info:
            pytorch2onnx.main([tiny[0], '--out', out])
    assert str(exit_info.value) == (
        f'error: {tiny[0]}: torch.onnx.export failed: OnnxExporterError: '
        'aten::frobnicate is not supported')

    class BrokenSession:
        def __init__(self, *args, **kwargs):
            raise RuntimeError('Incompatible dimensions')

    monkeypatch.setattr(pytorch2onnx.ort, 'InferenceSession', BrokenSession)
    with pytest.raises(SystemExit) as exit_info:
        pytorch2onnx.main([tiny[0], '--out', out, '--shape', '64', '64'])
    assert str(exit_info.value) == (
        f'error: {tiny[0]}: onnxruntime cannot run {out}: RuntimeError: '
        'Incompatible dimensions')


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


def test_tools_name_a_config_that_does_not_build(tiny, tmp_path):
    config = tmp_path / 'bad.py'
    config.write_text(f"_base_ = ['{tiny[0]}']\n"
                      "model = dict(decode_head=dict(type='ProxyHed'))\n")
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((32, 48, 3), np.uint8))
    runs = [
        ('model', lambda: get_flops.analyse(str(config))),
        ('model', lambda: demo.main([str(image), str(config), tiny[1],
                                     '--out', str(tmp_path / 'demo'),
                                     '--device', 'cpu'])),
        ('model', lambda: pytorch2onnx.main([str(config), '--out',
                                             str(tmp_path / 'm.onnx')])),
        ('models', lambda: benchmark.main([str(config), '--iters', '1'])),
    ]
    for what, run in runs:
        with pytest.raises(SystemExit, match=f'^error: {config}: cannot '
                           f'build the {what}: KeyError: ProxyHed is not in '
                           'the mmseg::model registry'):
            run()


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
