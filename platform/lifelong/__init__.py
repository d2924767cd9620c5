"""lifelong: a life-long key-value memory for neural networks (Kaiser et al., ICLR 2017), on Ray."""

__version__ = "0.1.0"
