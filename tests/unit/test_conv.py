import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.models import ENCODER_NAMES, build_encoder


@pytest.mark.parametrize("name", ENCODER_NAMES)
@pytest.mark.parametrize("key_dim", [64, 128])
def test_encoder_maps_images_to_keys(name, key_dim):
    encoder = build_encoder(name, key_dim=key_dim)
    out = encoder(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, key_dim) and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_paper_encoder_layout():
    encoder = build_encoder("paper")
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in encoder.modules()) == 2
    assert encoder.fc.in_features == 128 * 7 * 7 and encoder.fc.out_features == 128


def test_dropout_only_in_training():
    encoder = build_encoder("tiny", dropout=0.7)
    x = torch.rand(4, 1, 28, 28)
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))
    encoder.train()
    assert (encoder(x) == 0).float().mean() > 0.5


@pytest.mark.parametrize("kwargs", [{"name": "resnet"}, {"name": "paper", "key_dim": 0},
                                    {"name": "paper", "dropout": 1.0}])
def test_bad_encoder_config(kwargs):
    with pytest.raises(ConfigError):
        build_encoder(**kwargs)
