# DINOv3 ViT-S/16 frozen: the whole backbone (its 12 layers and final
# norm) is fixed and only the ProxyHead trains. See docs/frozen_backbones.md.
_base_ = ('./regproxy-dinov3-s16-sub4'
          '+implicit-mid-4+512x512+160k+adamw-poly+ade20k.py')
model = dict(backbone=dict(frozen_stages=12))
# The learning rate of a head-only run: 1e-3, that of DINOv2's linear
# segmentation heads on frozen features (AdamW). The full recipe's 6e-5 is
# small so as not to destroy the pretrained backbone; a head trained from
# random weights on fixed features needs no such care. (Drop path is off in
# the frozen layers: they stay in eval mode.)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
