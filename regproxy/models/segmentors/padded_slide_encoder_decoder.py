import difflib
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import OptSampleList, SampleList

__all__ = ['PaddedSlideEncoderDecoder', 'argmax_by_chunks']

# Elements of the resized logits of one chunk of classes (B x c x H x W) in
# predict() with ``test_cfg.return_logits=False``. CPU: 16 MiB of float32,
# the fastest of 4-64 MiB for 150 classes at 512x512 and 1024x1024. Other
# devices (GPUs): 256 MiB, few chunks and kernel launches (not measured).
CPU_CHUNK_ELEMENTS = 2**22
GPU_CHUNK_ELEMENTS = 2**26


def _as_tuple(value) -> tuple:
    """mmseg heads hold one int or a sequence for in_channels/in_index."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value, )


def _update_argmax(best: List[torch.Tensor], index: List[torch.Tensor],
                   k0: int, chunk_scores: Sequence[torch.Tensor],
                   index_dtype: torch.dtype) -> None:
    """Fold the (c, H, W) scores of classes ``k0:k0 + c`` of every image
    into its running maximum ``best`` and argmax ``index`` (both empty
    before the first chunk), one class at a time, in place."""
    for i, image_scores in enumerate(chunk_scores):
        for k, values in enumerate(image_scores, start=k0):
            if k == 0:
                best.append(values.clone())
                index.append(values.new_zeros(values.shape,
                                              dtype=index_dtype))
                continue
            # Larger, or NaN where the best is not: not (values <= best)
            # for a number best, never for a NaN best.
            better = (values <= best[i]).logical_not_().logical_and_(
                best[i] == best[i])
            index[i].masked_fill_(better, k)
            torch.maximum(best[i], values, out=best[i])  # NaN stays


def argmax_by_chunks(
        num_classes: int, chunk: int,
        scores: Callable[[int, int], Sequence[torch.Tensor]]
) -> List[torch.Tensor]:
    """Argmax over the classes of scores computed ``chunk`` classes at a
    time, for each of a batch of images: the same as
    ``[s.argmax(0) for s in scores(0, num_classes)]``, ties and NaNs
    included (the first largest, or the first NaN, wins).

    Args:
        num_classes (int): K.
        chunk (int): classes per call of ``scores``.
        scores (Callable): ``scores(k0, k1)`` -> one (k1 - k0, H, W) tensor
            per image, the scores of the classes ``k0:k1``.

    Returns:
        list[Tensor]: (H, W) int64 class indices of every image.
    """
    # Besides a chunk, the peak holds one float map and one map of indices
    # (uint8 for up to 256 classes) per image: no max() over the chunk
    # with its values and int64 indices, and no torch.where copy (on
    # Cityscapes slide, 1024 x 2048: a peak of 82 MiB instead of 134). A
    # chunk's scores are freed before the next chunk's are computed.
    index_dtype = torch.uint8 if num_classes <= 256 else torch.long
    best, index = [], []
    for k0 in range(0, num_classes, chunk):
        _update_argmax(best, index, k0,
                       scores(k0, min(k0 + chunk, num_classes)), index_dtype)
    del best  # before the int64 maps are made
    return [indices.long() for indices in index]


@MODELS.register_module()
class PaddedSlideEncoderDecoder(EncoderDecoder):
    """EncoderDecoder whose sliding-window inference zero-pads a window that
    is smaller than the crop (an image side shorter than the crop) to the
    crop size, runs it and crops its logits back.

    A ViT sees a window at the resolution it was trained on this way, as
    RegionProxy's published evaluation does. Whole-image inference and
    training are mmseg's.

    ``test_cfg.return_logits=False`` is for callers that need the class
    map only (scoring with ``IoUMetric`` or ``CityscapesMetric``, label maps
    written by ``--out``, pictures of the predictions): ``predict()`` then
    fills ``pred_sem_seg`` alone, without the (K, H, W) ``seg_logits`` of
    every image. It keeps the head's low-resolution logits (of the image,
    or of every slide window), resizes them to the image a few classes at a
    time and keeps a running argmax; the class map is identical to mmseg's.
    Ask for it in the config (``model.test_cfg.return_logits=False``, also
    through ``--cfg-options``) or on a built model
    (``model.test_cfg.return_logits = False``). The default (True) keeps
    mmseg's ``seg_logits``, which test-time augmentation (``SegTTAModel``)
    averages. ``inference()``, ``encode_decode()`` and the slide and whole
    inferences return the logits either way.

    Args:
        **kwargs: ``EncoderDecoder`` arguments. The backbone's
            ``embed_dims`` must match the head's ``in_channels``, the head's
            ``in_index`` must select existing backbone outputs, and a slide
            crop must hold at least one patch with a stride no larger than
            the crop; all are checked here, at build time, rather than
            failing (or leaving gaps) inside the first forward pass.
            ``test_cfg`` may hold only :attr:`TEST_CFG_KEYS`.
    """

    # What EncoderDecoder's inference reads from test_cfg, and ours; any
    # other key (a typo such as ``strid``) would be ignored without a word.
    TEST_CFG_KEYS = ('mode', 'crop_size', 'stride', 'return_logits')

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
        return_logits = (self.test_cfg or {}).get('return_logits', True)
        if not isinstance(return_logits, bool):
            raise ValueError('test_cfg.return_logits must be True or False, '
                             f'got {return_logits!r}')
        if not return_logits and self.out_channels == 1:
            raise ValueError(
                'test_cfg.return_logits=False needs one logit per class: '
                'a one-channel head thresholds its sigmoid instead '
                f'(decode_head.out_channels={self.out_channels})')

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
        windows = self.window_logits(inputs, batch_img_metas)
        return self.merge_windows(windows, inputs.shape, batch_img_metas, 0,
                                  self.out_channels)

    def window_logits(self, inputs: torch.Tensor,
                      batch_img_metas: List[dict]) -> List[tuple]:
        """The head's logits of every slide window, zero-padded to the
        crop size (``batch_img_metas[0]['img_shape']`` becomes that size,
        as in mmseg's ``slide_inference``).

        Returns:
            list[tuple]: ``((y1, y2, x1, x2), logits)`` per window: where
            it lies in the image and its (B, K, h, w) logits.
        """
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        h_img, w_img = inputs.shape[2:]
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        windows = []
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                window = inputs[:, :, y1:y2, x1:x2]
                window = F.pad(window, (0, w_crop - (x2 - x1), 0,
                                        h_crop - (y2 - y1)))
                batch_img_metas[0]['img_shape'] = window.shape[2:]
                logits = self.decode_head(self.extract_feat(window))
                windows.append(((y1, y2, x1, x2), logits))
        return windows

    def merge_windows(self, windows: List[tuple], image_shape: Sequence[int],
                      batch_img_metas: List[dict], k0: int,
                      k1: int) -> torch.Tensor:
        """Classes ``k0:k1`` of the :meth:`window_logits` resized to the
        crop (the head's ``predict_by_feat`` reads its size from
        ``batch_img_metas``, as :meth:`window_logits` left them), cut back
        to their windows and averaged where they overlap.

        Returns:
            Tensor: (B, k1 - k0, H, W) seg logits of the image.
        """
        B, _, h_img, w_img = image_shape
        first = windows[0][1]
        preds = first.new_zeros((B, k1 - k0, h_img, w_img))
        count = first.new_zeros((1, 1, h_img, w_img))
        for (y1, y2, x1, x2), logits in windows:
            logits = self.decode_head.predict_by_feat(logits[:, k0:k1],
                                                      batch_img_metas)
            preds[:, :, y1:y2, x1:x2] += logits[:, :, :y2 - y1, :x2 - x1]
            count[:, :, y1:y2, x1:x2] += 1
        return preds.div_(count)  # in place: no second (B, K, H, W) tensor

    def predict(self,
                inputs: torch.Tensor,
                data_samples: OptSampleList = None) -> SampleList:
        """mmseg's ``predict``; with ``test_cfg.return_logits=False`` the
        samples get ``pred_sem_seg`` only (see the class docstring).

        Args:
            inputs (Tensor): (B, C, H, W) normalised images.
            data_samples (list[SegDataSample], optional): samples with the
                images' meta information; None for bare images.

        Returns:
            list[SegDataSample]: the samples with the predictions.
        """
        if self.test_cfg.get('return_logits', True):
            return super().predict(inputs, data_samples)
        if data_samples is None:
            batch_img_metas = [
                dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                     pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])
            ] * inputs.shape[0]
        else:
            batch_img_metas = [sample.metainfo for sample in data_samples]
        if self.test_cfg.get('mode', 'whole') == 'slide':
            windows = self.window_logits(inputs, batch_img_metas)

            def image_logits(k0, k1):
                return self.merge_windows(windows, inputs.shape,
                                          batch_img_metas, k0, k1)
        else:
            head_logits = self.decode_head(self.extract_feat(inputs))

            def image_logits(k0, k1):
                return self.decode_head.predict_by_feat(
                    head_logits[:, k0:k1], batch_img_metas)

        def scores(k0, k1):
            logits = image_logits(k0, k1)
            if data_samples is None:  # as mmseg: the input's size
                return list(logits)
            return [
                self.restore_image_logits(logits[i:i + 1], meta)
                for i, meta in enumerate(batch_img_metas)
            ]

        pixels = max([inputs.shape[2] * inputs.shape[3]] + [
            meta['ori_shape'][0] * meta['ori_shape'][1]
            for meta in batch_img_metas
        ])
        budget = (CPU_CHUNK_ELEMENTS
                  if inputs.device.type == 'cpu' else GPU_CHUNK_ELEMENTS)
        chunk = max(1, budget // (len(inputs) * pixels))
        samples = data_samples or [SegDataSample() for _ in inputs]
        for sample, pred in zip(
                samples, argmax_by_chunks(self.out_channels, chunk, scores)):
            sample.set_data({'pred_sem_seg': PixelData(data=pred[None])})
        return samples

    def restore_image_logits(self, logits: torch.Tensor,
                             meta: dict) -> torch.Tensor:
        """(1, c, H, W) logits of an input -> (c, h, w) logits of its
        original image: the padding cut off, the flip undone and the
        logits resized to ``meta['ori_shape']``, as mmseg 1.2.2's
        ``postprocess_result`` does. Logits already of that size are not
        resized: a bilinear resize to the same size copies finite values
        unchanged, at the cost of a resize (0.5 s for 150 x 1024 x 1024 on
        one core here).
        """
        padding = meta.get('img_padding_size',
                           meta.get('padding_size', [0] * 4))
        left, right, top, bottom = padding
        H, W = logits.shape[2:]
        logits = logits[:, :, top:H - bottom, left:W - right]
        if meta.get('flip'):
            direction = meta.get('flip_direction')
            if direction not in ('horizontal', 'vertical'):
                raise ValueError(f'flip_direction={direction!r} in the image '
                                 "meta: expected 'horizontal' or 'vertical'")
            logits = logits.flip(dims=(3, ) if direction == 'horizontal'
                                 else (2, ))
        if tuple(logits.shape[2:]) != tuple(meta['ori_shape'][:2]):
            logits = resize(logits, size=meta['ori_shape'], mode='bilinear',
                            align_corners=self.align_corners, warning=False)
        return logits[0]
