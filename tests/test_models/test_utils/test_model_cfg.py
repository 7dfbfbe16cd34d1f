from regproxy.models.utils import standalone_model_cfg


def test_standalone_model_cfg_copies_without_weights_files():
    cfg = dict(
        type='PaddedSlideEncoderDecoder', pretrained='seg.pth',
        backbone=dict(type='RegionProxyViT', pretrained='vit.pth'),
        decode_head=dict(norm_cfg=dict(type='SyncBN')))
    standalone = standalone_model_cfg(cfg)
    assert standalone['pretrained'] is None
    assert standalone['backbone']['pretrained'] is None
    assert standalone['backbone']['init_cfg'] is None
    assert standalone['decode_head']['norm_cfg']['type'] == 'BN'
    # the original is untouched
    assert cfg['backbone']['pretrained'] == 'vit.pth'
    assert cfg['decode_head']['norm_cfg']['type'] == 'SyncBN'
