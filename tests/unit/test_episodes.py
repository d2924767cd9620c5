"""N-way episode sampling: shapes, label offsets, presentation order, drawers, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.data import EpisodeSampler
from lifelong.errors import ConfigError, DataError

C, N, H, W = 12, 6, 4, 5


def identified_images() -> np.ndarray:
    """[C, N, H, W] uint8 whose pixel [0, 0] is 10*class + drawer, so pixels name their source."""
    images = np.zeros((C, N, H, W), dtype=np.uint8)
    images[:, :, 0, 0] = 10 * np.arange(C)[:, None] + np.arange(N)[None, :]
    images[:, :, 1, 1] = 255
    return images


def test_shapes_dtypes_and_range():
    episode = EpisodeSampler(identified_images(), way=5, presentations=3, seed=0).sample(4)
    assert episode.x.shape == (15, 4, 1, H, W) and episode.x.dtype == torch.float32
    assert episode.y.shape == (15, 4) and episode.y.dtype == torch.int64
    assert episode.shot.shape == (15, 4) and episode.shot.dtype == torch.int64
    assert episode.x.min() >= 0 and episode.x.max() == 1.0


def test_labels_of_episode_b_are_offset_by_b_times_way():
    way, batch = 5, 4
    episode = EpisodeSampler(identified_images(), way=way, presentations=3, seed=1).sample(batch)
    for b in range(batch):
        assert sorted(set(episode.y[:, b].tolist())) == list(range(b * way, (b + 1) * way))


def test_every_class_is_shown_k_times_before_any_is_shown_k_plus_one_times():
    way, presentations = 4, 5
    sampler = EpisodeSampler(identified_images(), way=way, presentations=presentations, seed=2)
    episode = sampler.sample(8)
    y = episode.y.numpy()
    for b in range(8):
        for p in range(presentations):
            block = y[p * way:(p + 1) * way, b]
            assert sorted(block) == list(range(b * way, (b + 1) * way))
    # Rounds are reshuffled independently: the order is not the same round after round.
    assert any(not np.array_equal(y[:way, b], y[way:2 * way, b]) for b in range(8))


def test_shot_counts_earlier_presentations_of_the_label():
    way, presentations = 3, 4
    episode = EpisodeSampler(identified_images(), way=way, presentations=presentations,
                             seed=3).sample(5)
    y, shot = episode.y.numpy(), episode.shot.numpy()
    for b in range(5):
        seen: dict[int, int] = {}
        for t in range(way * presentations):
            assert shot[t, b] == seen.get(y[t, b], 0)
            seen[y[t, b]] = seen.get(y[t, b], 0) + 1
    np.testing.assert_array_equal(shot[:, 0], np.arange(way * presentations) // way)


def test_each_label_is_one_class_with_distinct_drawers_and_pixels_match():
    images = identified_images()
    sampler = EpisodeSampler(images, way=5, presentations=N, seed=4)
    idx = sampler.sample_indices(6)
    for b in range(6):
        classes_of_episode = set()
        for label in range(b * 5, (b + 1) * 5):
            steps = idx.y[:, b] == label
            assert len(set(idx.classes[steps, b])) == 1  # one class per label
            classes_of_episode.add(idx.classes[steps, b][0])
            assert sorted(idx.drawers[steps, b]) == list(range(N))  # all drawers, none twice
        assert len(classes_of_episode) == 5  # distinct classes
    episode = EpisodeSampler(images, way=5, presentations=N, seed=4).sample(6)
    source = (episode.x[:, :, 0, 0, 0] * 255).round().long().numpy()
    np.testing.assert_array_equal(source, 10 * idx.classes + idx.drawers)
    np.testing.assert_array_equal(episode.y.numpy(), idx.y)


def test_same_seed_same_episodes_other_seed_other_episodes():
    images = identified_images()
    a = EpisodeSampler(images, way=5, presentations=2, seed=7)
    b = EpisodeSampler(images, way=5, presentations=2, seed=7)
    c = EpisodeSampler(images, way=5, presentations=2, seed=8)
    for _ in range(3):
        ea, eb, ec = a.sample(4), b.sample(4), c.sample(4)
        assert torch.equal(ea.x, eb.x) and torch.equal(ea.y, eb.y)
    assert not torch.equal(ea.x, ec.x)


def test_all_classes_and_drawers_get_sampled():
    idx = EpisodeSampler(identified_images(), way=2, presentations=1, seed=5).sample_indices(500)
    assert set(idx.classes.ravel()) == set(range(C))
    assert set(idx.drawers.ravel()) == set(range(N))


def test_images_are_not_modified_or_copied():
    images = identified_images()
    before = images.copy()
    sampler = EpisodeSampler(images, way=3, presentations=2, seed=0)
    sampler.sample(3).x.mul_(0)
    assert sampler.images is images
    np.testing.assert_array_equal(images, before)


def test_read_only_images_are_accepted():
    images = identified_images()
    images.flags.writeable = False
    assert EpisodeSampler(images, way=3, presentations=2, seed=0).sample(2).x.shape[0] == 6


@pytest.mark.parametrize("kwargs, match", [
    ({"way": 0}, "way"), ({"way": C + 1}, "exceeds the 12 classes"), ({"way": 2.0}, "way"),
    ({"way": True}, "way"), ({"presentations": 0}, "presentations"),
    ({"presentations": N + 1}, "exceeds the 6 images"), ({"seed": -1}, "seed"),
    ({"seed": "0"}, "seed"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    arguments = {"way": 5, "presentations": 2, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        EpisodeSampler(identified_images(), **arguments)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_bad_batch_size_is_a_config_error(batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        EpisodeSampler(identified_images(), way=5, presentations=2, seed=0).sample(batch_size)


@pytest.mark.parametrize("images", [np.zeros((C, N, H, W), np.float32),
                                    np.zeros((C, N, H), np.uint8), [[0]]])
def test_malformed_images_are_a_data_error(images):
    with pytest.raises(DataError):
        EpisodeSampler(images, way=2, presentations=1, seed=0)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        EpisodeSampler(identified_images(), way=0, presentations=1, seed=0)
