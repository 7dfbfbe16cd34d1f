import difflib
from typing import List

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

__all__ = ['PaddedSlideEncoderDecoder']


def _as_tuple(value) -> tuple:
    """mmseg heads hold one int or a sequence for in_channels/in_index."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value, )


@MODELS.register_module()
class PaddedSlideEncoderDecoder(EncoderDecoder):
    """EncoderDecoder whose sliding-window inference zero-pads a window that
    is smaller than the crop (an image side shorter than the crop) to the
    crop size, runs it and crops its logits back.

    A ViT sees a window at the resolution it was trained on this way, as
    RegionProxy's published evaluation does. Whole-image inference and
    training are mmseg's.

    Args:
        **kwargs: ``EncoderDecoder`` arguments. The backbone's
            ``embed_dims`` must match the head's ``in_channels``, the head's
            ``in_index`` must select existing backbone outputs, and a slide
            crop must hold at least one patch with a stride no larger than
            the crop; all are checked here, at build time, rather than
            failing (or leaving gaps) inside the first forward pass.
            ``test_cfg`` may hold only :attr:`TEST_CFG_KEYS`.
    """

    # What EncoderDecoder's inference reads from test_cfg; any other key
    # (a typo such as ``strid``) would be ignored without a word.
    TEST_CFG_KEYS = ('mode', 'crop_size', 'stride')

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        embed_dims = getattr(self.backbone, 'embed_dims', None)
        in_channels = _as_tuple(self.decode_head.in_channels)
        if embed_dims is not None and any(c != embed_dims
                                          for c in in_channels):
            raise ValueError(
                f'decode_head.in_channels={in_channels} does not match '
                f'backbone.embed_dims={embed_dims}')
        out_indices = getattr(self.backbone, 'out_indices', None)
        in_index = _as_tuple(self.decode_head.in_index)
        if out_indices is not None and not all(
                -len(out_indices) <= i < len(out_indices) for i in in_index):
            raise ValueError(
                f'decode_head.in_index={in_index} selects outputs the '
                f'backbone does not have: out_indices={out_indices} gives '
                f'{len(out_indices)}')
        self._check_test_cfg_keys()
        if self.test_cfg and self.test_cfg.get('mode') == 'slide':
            self._check_slide_windows()

    def _check_test_cfg_keys(self):
        """Refuse test_cfg keys that inference does not read."""
        for key in self.test_cfg or {}:
            if key in self.TEST_CFG_KEYS:
                continue
            close = difflib.get_close_matches(key, self.TEST_CFG_KEYS, n=1)
            hint = f'did you mean {close[0]!r}? ' if close else ''
            raise ValueError(
                f'test_cfg.{key} is not a setting of {type(self).__name__}: '
                f'{hint}test_cfg takes {", ".join(self.TEST_CFG_KEYS)}')

    def _check_slide_windows(self):
        """A crop holds a patch; windows overlap or touch (no pixel left
        without a prediction)."""
        patch = getattr(self.backbone, 'patch_size', 1)
        crop = self.test_cfg.get('crop_size')
        if crop is None or min(crop) < patch:
            raise ValueError(
                f'test_cfg.crop_size={crop} is smaller than one patch '
                f'({patch}x{patch} pixels)')
        stride = self.test_cfg.get('stride')
        if stride is None or not all(1 <= s <= c
                                     for s, c in zip(stride, crop)):
            raise ValueError(
                f'test_cfg.stride={stride} must be between 1 and '
                f'test_cfg.crop_size={crop}: a larger stride leaves pixels '
                'that no window covers')

    def slide_inference(self, inputs: torch.Tensor,
                        batch_img_metas: List[dict]) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, K, H, W) seg logits."""
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        B, _, h_img, w_img = inputs.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = inputs.new_zeros((B, self.out_channels, h_img, w_img))
        count = inputs.new_zeros((1, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                window = inputs[:, :, y1:y2, x1:x2]
                h, w = window.shape[2:]
                window = F.pad(window, (0, w_crop - w, 0, h_crop - h))
                batch_img_metas[0]['img_shape'] = window.shape[2:]
                logits = self.encode_decode(window, batch_img_metas)
                preds[:, :, y1:y2, x1:x2] += logits[:, :, :h, :w]
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count
