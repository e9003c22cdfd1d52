"""Sampling in channels-last layout: same images as NCHW, weights really converted, plain functions accepted."""

import torch

from core.config import preset
from core.model.diffusion import create_diffusion
from core.model.sampling import sample_images, set_layout
from core.model.unet import build_unet


def _model():
    cfg = preset("tiny")
    cfg["model"]["model_channels"] = 24  # widths of 24/48: not a multiple of oneDNN's 16-channel blocks
    cfg["diffusion"]["steps"] = 100
    model = build_unet(cfg["model"], seed=0).eval()
    with torch.no_grad():  # the output conv starts at zero (IDDPM's init); give it weights so samples depend on the net
        model.out_conv.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return cfg, model


def test_channels_last_changes_layout_not_results():
    _, model = _model()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 50, 99])
    with torch.inference_mode():
        ref = model(x, t)
        set_layout(model, True)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        assert not all(c.weight.is_contiguous() for c in convs)
        out = model(x, t)
    assert out.shape == ref.shape == (3, 2, 32, 32)
    assert ref.abs().max() > 1e-3
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    set_layout(model, False)
    assert all(c.weight.is_contiguous() for c in convs)


def test_sample_images_same_with_either_layout():
    cfg, model = _model()
    d = create_diffusion(cfg)
    kw = dict(image_size=32, channels=1, steps=10, batch_size=4, seed=3)
    a = sample_images(model, d, 6, channels_last=False, **kw)
    b = sample_images(model, d, 6, channels_last=True, **kw)
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 32, 32)
    assert a.float().std() > 5  # real images, not a constant
    diff = (a.int() - b.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    # a plain function stands in for a model: left as it is
    f = lambda x, t: torch.zeros(x.shape[0], 2, *x.shape[2:])
    assert set_layout(f) is f
    assert sample_images(f, d, 2, **kw).shape == (2, 1, 32, 32)
