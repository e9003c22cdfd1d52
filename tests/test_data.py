import numpy as np
import pytest
import torch
from PIL import Image

from core import config as C
from core.errors import UserError
from core.model.diffusion import to_model_range
from core.training.data import BatchStream, load_dataset


def test_bundled_digits_padded_to_tiny_size():
    cfg = C.preset("tiny")
    ds = load_dataset(cfg)
    assert ds.images.shape == (5000, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images[:, :, :2, :].max() == 0  # 2 px of padding
    assert ds.images.max() == 255 and not ds.flip
    x = to_model_range(ds.images[:8])
    assert x.min() == -1 and x.max() == 1


def test_digits_to_rgb_and_resize():
    cfg = C.preset("cifar10")
    cfg["model"]["image_size"] = 16
    ds = load_dataset(cfg, "digits")
    assert ds.images.shape == (5000, 3, 16, 16)


def test_batch_stream_is_a_function_of_seed_and_index():
    ds = load_dataset(C.preset("tiny"))
    a, b = BatchStream(ds, 16, 3), BatchStream(ds, 16, 3)
    assert torch.equal(a[7], b[7]) and not torch.equal(a[7], a[8])
    assert not torch.equal(a[7], BatchStream(ds, 16, 4)[7])
    # one epoch covers every image exactly once
    idx = torch.cat([a.indices(k) for k in range(5000 // 16 + 1)])[:5000]
    assert sorted(idx.tolist()) == list(range(5000))


def test_image_folder(tmp_path):
    for cls in ["a", "b"]:
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = (np.random.rand(40, 50, 3) * 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    cfg = C.preset("cifar10")
    ds = load_dataset(cfg, f"folder:{tmp_path}")
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x = BatchStream(ds, 4, 0)[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8


def test_missing_datasets_are_user_errors(tmp_path):
    cfg = C.preset("cifar10")
    with pytest.raises(UserError, match="--download"):
        load_dataset(cfg, f"cifar10:{tmp_path}")
    with pytest.raises(UserError, match="not found"):
        load_dataset(cfg, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_dataset(cfg, f"folder:{tmp_path / 'empty'}")
