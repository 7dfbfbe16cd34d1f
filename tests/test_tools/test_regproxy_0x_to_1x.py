"""tools/model_converters/regproxy_0x_to_1x.py on a released-layout (mmseg
0.x) checkpoint made from the conformance weights of the ADE20K ViT-Ti/16
model, and the files it refuses."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from regproxy.engine import load_segmentor_checkpoint
from tests.conformance import CONFIG_DIR, conformance_path
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
T16 = CONFIG_DIR / 'regproxy_ade20k' / (
    'regproxy-t16-sub4+implicit-mid-4+512x512+160k+adamw-poly+ade20k.py')
T16_CITYSCAPES = CONFIG_DIR / 'regproxy_cityscapes' / (
    'regproxy-t16-sub4+implicit-mid-2+768x768+80k+adamw-poly+cityscapes.py')


converter = load_script(
    'tools/model_converters/regproxy_0x_to_1x.py')


@pytest.fixture(scope='module')
def weights() -> dict:
    """The released ViT-Ti/16 ADE20K weights, as float32."""
    reference = torch.load(conformance_path('t16_ade20k.pt'),
                           weights_only=True)
    return {
        k: v.float() if v.is_floating_point() else v
        for k, v in reference['state_dict'].items()
    }


def _old_meta(classes=None, palette=None) -> dict:
    meta = dict(
        config="model = dict(type='EncoderDecoder')\n",
        mmseg_version='0.20.2+7b2ca8d',
        mmcv_version='1.4.0',
        epoch=1,
        iter=160000)
    if classes is not None:
        meta.update(CLASSES=classes, PALETTE=palette)
    return meta


def _write(path: Path, checkpoint) -> Path:
    torch.save(checkpoint, path)
    return path


# Not the config dataset's, to see that the written ones are the file's.
OWN_CLASSES = tuple(f'class {i}' for i in range(150))
OWN_PALETTE = [[i, 255 - i, (7 * i) % 256] for i in range(150)]


@pytest.fixture(scope='module')
def converted(weights, tmp_path_factory) -> tuple:
    """(0.x file, 1.x file) converted with --config, CLASSES in 0.x meta."""
    folder = tmp_path_factory.mktemp('convert')
    # 0.x datasets with a random palette stored it as a numpy array.
    src = _write(folder / 'regproxy_t16_0x.pth', dict(
        state_dict=weights,
        meta=_old_meta(OWN_CLASSES, np.array(OWN_PALETTE)),
        optimizer=dict(state={}, param_groups=[dict(lr=0.1)])))
    dst = folder / 'regproxy_t16_1x.pth'
    converter.main([str(src), str(dst), '--config', str(T16)])
    return src, dst


def test_written_checkpoint_meta_and_weights(converted, weights):
    _, dst = converted
    # Plain weights-only loading, as mmengine's load_checkpoint does it.
    checkpoint = torch.load(dst, weights_only=True)
    assert set(checkpoint) == {'meta', 'state_dict'}
    meta = checkpoint['meta']
    assert meta['dataset_meta'] == dict(classes=OWN_CLASSES,
                                        palette=OWN_PALETTE)
    assert Config.fromstring(meta['cfg'], '.py').model.decode_head[
        'num_classes'] == 150
    assert checkpoint['state_dict'].keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(checkpoint['state_dict'][key], value), key


def test_written_checkpoint_loads_strictly(converted, weights):
    from mmseg.apis import init_model
    _, dst = converted
    model = init_model(str(T16), device='cpu')
    load_segmentor_checkpoint(model, dst)  # strict
    own = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(own[key], value), key


def test_init_model_and_inferencer_know_the_classes(converted):
    from mmseg.apis import MMSegInferencer, init_model
    _, dst = converted
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3),
                                              dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = init_model(str(T16), str(dst), device='cpu')
        inferencer = MMSegInferencer(str(T16), str(dst), device='cpu')
        # The visualizer takes the model's classes when it draws.
        result = inferencer(image, return_vis=True, with_labels=True)
    assert model.dataset_meta['classes'] == OWN_CLASSES
    assert inferencer.model.dataset_meta['classes'] == OWN_CLASSES
    assert inferencer.visualizer.dataset_meta['classes'] == OWN_CLASSES
    assert inferencer.visualizer.dataset_meta['palette'] == OWN_PALETTE
    assert result['visualization'].shape == image.shape
    # mmseg's warnings when it falls back to other classes
    about_meta = [
        str(w.message) for w in caught
        if any(text in str(w.message).lower()
               for text in ('dataset_meta', 'class names', 'cityscapes'))
    ]
    assert about_meta == []


def _refused(src: Path, tmp_path: Path, *options: str) -> str:
    dst = tmp_path / 'refused.pth'
    with pytest.raises(SystemExit) as exit_info:
        converter.main([str(src), str(dst), *options])
    assert not dst.exists()
    message = str(exit_info.value)
    assert message.startswith('error: ')
    return message


def test_refuses_imagenet_weights(tmp_path):
    timm = {
        'cls_token': torch.zeros(1, 1, 8),
        'pos_embed': torch.zeros(1, 5, 8),
        'patch_embed.proj.weight': torch.zeros(8, 3, 16, 16),
        'blocks.0.norm1.weight': torch.ones(8),
        'head.weight': torch.zeros(10, 8),
    }
    message = _refused(_write(tmp_path / 'vit.pth', timm), tmp_path,
                       '--config', str(T16))
    assert "vit.pth has no 'state_dict'" in message
    assert 'ImageNet ViT weights: tools/model_converters/vit2regproxy.py' \
        in message


def test_refuses_a_file_without_state_dict(tmp_path):
    message = _refused(_write(tmp_path / 'meta_only.pth',
                              dict(meta=_old_meta(), epoch=3)), tmp_path,
                       '--config', str(T16))
    assert "meta_only.pth has no 'state_dict'; expected an mmseg 0.x " \
        'checkpoint' in message


def test_refuses_a_backbone_only_file(weights, tmp_path):
    backbone = {k: v for k, v in weights.items() if k.startswith('backbone.')}
    message = _refused(
        _write(tmp_path / 'backbone.pth', dict(state_dict=backbone)),
        tmp_path, '--config', str(T16))
    assert 'missing keys in source state_dict: decode_head.mlp.0.0.weight' \
        in message


def test_refuses_weights_of_another_model(weights, tmp_path):
    src = _write(tmp_path / 'ade.pth',
                 dict(state_dict=weights, meta=_old_meta()))
    message = _refused(src, tmp_path, '--config', str(T16_CITYSCAPES))
    # 150 ADE20K classes against the 19 of Cityscapes, and another grid
    assert f'ade.pth does not fit the model of {T16_CITYSCAPES}' in message
    assert ('size mismatch for backbone.pos_embed: copying a param with '
            'shape torch.Size([1, 1025, 192]) from checkpoint, the shape in '
            'current model is torch.Size([1, 2305, 192])') in message
    assert 'load_strict' not in message


def test_refuses_a_missing_key_naming_it(weights, tmp_path):
    missing = dict(weights)
    del missing['backbone.ln1.weight']
    message = _refused(
        _write(tmp_path / 'missing.pth', dict(state_dict=missing)),
        tmp_path, '--config', str(T16))
    assert 'missing keys in source state_dict: backbone.ln1.weight' in \
        message


def test_refuses_a_file_without_class_names(weights, tmp_path):
    src = _write(tmp_path / 'no_classes.pth',
                 dict(state_dict=weights, meta=_old_meta()))
    message = _refused(src, tmp_path, '--config', str(T16))
    assert "the checkpoint's meta data has 0 class names and 0 colours " \
        'for the 150 classes of the model' in message


def test_refuses_class_names_that_do_not_fit(weights, tmp_path):
    src = _write(tmp_path / 'ten.pth', dict(
        state_dict=weights,
        meta=_old_meta(OWN_CLASSES[:10], OWN_PALETTE[:10])))
    message = _refused(src, tmp_path, '--config', str(T16))
    assert "the checkpoint's meta data has 10 class names and 10 colours " \
        'for the 150 classes of the model' in message


def test_refuses_a_safetensors_out(converted, tmp_path):
    dst = tmp_path / 'regproxy_t16_1x.safetensors'
    with pytest.raises(SystemExit, match='a safetensors file holds tensors '
                       'only, not the meta.dataset_meta'):
        converter.main([str(converted[0]), str(dst), '--config', str(T16)])
    assert not dst.exists()
