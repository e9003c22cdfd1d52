import json

import pytest
import torch

from core import config as C
from core.macs import count
from core.unet import AttentionBlock, build_unet
from tests.conftest import run_cli


def test_cifar10_counts_match_iddpm():
    p = run_cli("info", "--preset", "cifar10", "--json", check=0)
    res = json.loads(p.stdout)
    assert abs(res["params"] / 52.5e6 - 1) < 0.01, res
    assert abs(res["macs"] / 8.14e9 - 1) < 0.01, res
    # attention matmuls, two hw*hw*c products each: 7 blocks at 16x16x256, 7 at 8x8x256, the middle one at 4x4x256
    assert res["attn_macs"] == 7 * 2 * 256 ** 3 + 7 * 2 * 64 * 64 * 256 + 2 * 16 * 16 * 256


def test_imagenet64_counts_match_paper():
    m = C.preset("imagenet64")["model"]
    res = count(build_unet(m), 64, 3)
    assert abs(res["macs"] / 39.3e9 - 1) < 0.01, res  # the paper's Table 1 figure for IDDPM ImageNet64


def test_tiny_forward_shapes_and_learn_sigma():
    m = C.preset("tiny")["model"]
    net = build_unet(m)
    x = torch.randn(3, 1, 32, 32)
    out = net(x, torch.tensor([0, 500, 999]))
    assert out.shape == (3, 2, 32, 32)
    net2 = build_unet({**m, "learn_sigma": False})
    assert net2(x, torch.tensor([1, 2, 3])).shape == (3, 1, 32, 32)


def test_attention_is_chunk_ordered_with_fixed_scale():
    blk = AttentionBlock(64, 4)
    assert blk.qkv.out_channels == 3 * 64 and blk.num_heads == 4
    assert blk.scale == pytest.approx(16 ** -0.25)
    # an equal-size block built with fewer channels keeps the scale it was given (pruning changes weights only)
    x = torch.randn(2, 64, 8, 8)
    y = blk(x)
    assert y.shape == x.shape and blk.attn_macs == 2 * 64 * 64 * 64


def test_scale_shift_uses_two_linears_with_iddpm_parameter_count():
    m = build_unet(C.preset("cifar10")["model"])
    rb = m.input_blocks[1][0]
    assert rb.emb_scale.out_features == rb.emb_shift.out_features == 128
    assert rb.emb_scale.in_features == 512
