"""Models: the convolutional encoders of the Omniglot one-shot task."""

from lifelong.models.conv import ENCODER_NAMES, PaperEncoder, SmallEncoder, build_encoder

__all__ = ["ENCODER_NAMES", "PaperEncoder", "SmallEncoder", "build_encoder"]
