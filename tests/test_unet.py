import json

import pytest
import torch

from core import config as C
from core.model.macs import count
from core.model.unet import AttentionBlock, build_unet
from tests.conftest import run_cli


def test_cifar10_counts_match_iddpm():
    p = run_cli("info", "--preset", "cifar10", "--json", check=0)
    res = json.loads(p.stdout)
    assert abs(res["params"] / 52.5e6 - 1) < 0.01, res
    assert abs(res["macs"] / 8.14e9 - 1) < 0.01, res
    # attention matmuls, two hw*hw*c products each: 7 blocks at 16x16x256, 7 at 8x8x256, the middle one at 4x4x256
    assert res["attn_macs"] == 7 * 2 * 256**3 + 7 * 2 * 64 * 64 * 256 + 2 * 16 * 16 * 256


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


def test_attention_reads_q_k_v_as_three_chunks_of_all_heads():
    """qkv's output rows are [q of every head | k of every head | v of every head]. With the q chunk zero,
    attention is uniform and each output is the spatial mean of v; with the v chunk the identity of the
    normalised input and proj the identity, the block returns x + mean(norm(x)). Read per head
    (q0, k0, v0, q1, ...), the same weights give another output."""
    c = 8
    blk = AttentionBlock(c, 2, norm_groups=2).eval()
    with torch.no_grad():
        blk.qkv.weight.zero_()
        blk.qkv.bias.zero_()
        blk.qkv.weight[c : 2 * c, :, 0, 0] = torch.randn(c, c)  # k: anything
        blk.qkv.weight[2 * c :, :, 0, 0] = torch.eye(c)  # v: the normalised input
        blk.proj.weight.copy_(torch.eye(c)[:, :, None, None])
        blk.proj.bias.zero_()
    x = torch.randn(2, c, 4, 4)
    h = blk.norm(x)
    expected = x + h.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(blk(x), expected, atol=1e-5)


def test_attention_has_a_fixed_scale_and_counts_its_matmuls():
    blk = AttentionBlock(64, 4)
    assert blk.qkv.out_channels == 3 * 64 and blk.num_heads == 4
    assert blk.scale == pytest.approx(16**-0.25)
    # an equal-size block built with fewer channels keeps the scale it was given (pruning changes weights only)
    x = torch.randn(2, 64, 8, 8)
    y = blk(x)
    assert y.shape == x.shape and blk.attn_macs == 2 * 64 * 64 * 64


def test_scale_shift_uses_two_linears_with_iddpm_parameter_count():
    m = build_unet(C.preset("cifar10")["model"])
    rb = m.input_blocks[1][0]
    assert rb.emb_scale.out_features == rb.emb_shift.out_features == 128
    assert rb.emb_scale.in_features == 512
