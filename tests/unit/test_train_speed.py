"""Training speed options (issue 18, item 1): FLOP count, precision choice, bf16 training."""

import pytest
import torch
from torch import nn

from lifelong.config import load_config
from lifelong.errors import ConfigError
from lifelong.experiments.omniglot.config import OmniglotTrainJob, TrainConfig
from lifelong.experiments.omniglot.train import train_step
from lifelong.memory import Memory
from lifelong.models import SmallEncoder
from lifelong.models.flops import encoder_flops
from lifelong.runtime import precision
from lifelong.runtime.fast_encoder import FastEncoder


def test_flop_count_matches_a_hand_count():
    # 2 blocks of 8 channels on 8x8 images: conv 1->8 at 8x8, conv 8->8 at 4x4, fc 8*2*2 -> 4.
    encoder = SmallEncoder(key_dim=4, image_size=8, channels=8, blocks=2, dropout=0.0)
    conv1, conv2, fc = 8 * 8 * 8 * 9 * 1, 4 * 4 * 8 * 9 * 8, 8 * 2 * 2 * 4  # multiply-adds
    flops = encoder_flops(encoder, image_size=8)
    assert flops.forward == 2 * (conv1 + conv2 + fc)
    # Backward: weight gradients of every layer, input gradients of all but the first conv.
    assert flops.backward == 2 * (conv1 + 2 * conv2 + 2 * fc)
    assert flops.total == flops.forward + flops.backward
    assert all(p.grad is None for p in encoder.parameters())


def test_bad_precision_names_the_key():
    with pytest.raises(ConfigError, match="precision") as info:
        TrainConfig(precision="float16")
    assert info.value.key == "precision"
    with pytest.raises(ConfigError) as info:
        load_config(OmniglotTrainJob, None, ["train.precision=half"])
    assert "train.precision" in str(info.value)


def test_bad_flag_names_the_key():
    with pytest.raises(ConfigError) as info:
        TrainConfig(channels_last="yes")
    assert info.value.key == "channels_last"


def test_defaults_keep_float32():
    cfg = TrainConfig()
    assert (cfg.precision, cfg.channels_last, cfg.compile) == ("float32", False, False)


def test_auto_is_float32_without_bf16_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.resolve_precision("auto") == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    expected = "bfloat16" if torch.backends.mkldnn.is_available() else "float32"
    assert precision.resolve_precision("auto") == expected
    assert precision.resolve_precision("float32") == "float32"
    assert precision.resolve_precision("bfloat16") == "bfloat16"


def test_bf16_training_step_has_finite_loss_and_float32_keys():
    torch.manual_seed(0)
    encoder = SmallEncoder(key_dim=16, channels=8, blocks=2, dropout=0.0)
    runner = FastEncoder(encoder, "bfloat16", channels_last=True)
    length, batch = 6, 2
    memory = Memory(key_dim=16, num_slots=length * batch, num_values=3 * batch)
    x = torch.rand(length, batch, 1, 28, 28)
    y = (torch.arange(length)[:, None] % 3 + 3 * torch.arange(batch)[None, :]).long()
    loss, correct = train_step(runner, memory, x, y)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert memory.keys.dtype == torch.float32 and memory.keys.abs().sum() > 0
    assert correct.shape == (length, batch)
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for g in grads)
    assert set(runner.state_dict()) == {f"module.{k}" for k in encoder.state_dict()}


def test_fast_encoder_float32_matches_the_plain_encoder():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 64, 8))
    x = torch.rand(3, 1, 8, 8)
    expected = encoder(x)
    out = FastEncoder(encoder, "float32", channels_last=True)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_train_omniglot_in_bf16_channels_last_saves_a_float32_encoder(tmp_path):
    from lifelong.experiments.omniglot.train import train_omniglot
    from lifelong.models.checkpoint import load_encoder
    from omniglot_fakes import fake_split
    from test_training import small_job

    torch.set_num_threads(1)
    job = small_job(tmp_path, steps=3, precision="bfloat16", channels_last=True)
    result = train_omniglot(job, background=fake_split(num_characters=6, rotations=4),
                            progress=False)
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.last_metrics["train.loss"]))
    encoder, _ = load_encoder(result.checkpoint)
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
