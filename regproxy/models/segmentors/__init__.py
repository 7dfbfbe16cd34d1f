from .padded_slide_encoder_decoder import PaddedSlideEncoderDecoder

__all__ = ['PaddedSlideEncoderDecoder']
