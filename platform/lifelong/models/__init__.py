"""Models: the convolutional encoders of the Omniglot one-shot task (``conv``), the memory
translator (``translator``) and its subword vocabularies (``vocab``), and the checkpoints that
store them (``checkpoint``)."""

from lifelong.models.conv import ENCODER_NAMES, PaperEncoder, SmallEncoder, build_encoder

__all__ = ["ENCODER_NAMES", "PaperEncoder", "SmallEncoder", "build_encoder"]
