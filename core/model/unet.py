"""The IDDPM UNet (Nichol & Dhariwal 2021), written so that structural pruning can handle it.

Differences from improved-diffusion's module layout, all parameter- and MAC-neutral:

* Attention uses one 1x1 ``qkv`` convolution whose output is *chunk ordered*
  ``[q(all heads) | k(all heads) | v(all heads)]`` and is split with ``chunk(3)``;
  heads are formed with ``reshape(b, heads, -1, hw)`` (never ``b*heads``), and the
  q/k scale is fixed when the block is built, so a pruned block keeps its scale and
  its head count. ``AttentionBlock.num_heads`` is what the pruner is told.
* Scale-shift conditioning uses two linears (``emb_scale``, ``emb_shift``) instead of
  one linear split in two: the coupling of each to the output channels is explicit.
* Up/down-sampling layers keep no channel counts: they only hold their conv.

Everything counted by a module-level MAC counter (convs and linears) matches IDDPM:
the ``cifar10`` preset has 52.5M parameters and 8.14 GMACs at 32x32.

A few switches make the same UNet compute diffusers' ``UNet2DModel`` (DDPM's layout, ``unet2d.py``); each defaults
to IDDPM's behaviour, so a model built without them is the one built before they existed:

* ``time_flip_sin_to_cos`` / ``time_freq_shift``: the timestep embedding's order [cos | sin] or [sin | cos] and its
  frequencies exp(-log(10000) i / (half - shift));
* ``downsample_padding``: 1 pads the stride-2 conv by 1 on every side, 0 pads right and bottom only (TF's "SAME");
* ``norm_eps``: every GroupNorm's epsilon;
* ``head_channels``: with a value, every attention block has channels / head_channels heads (diffusers'
  ``attention_head_dim``) instead of ``num_heads``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = True, freq_shift: int = 0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [N] -> [N, dim]:
    f_i = exp(-log(max_period) i / (half - freq_shift)), emb = [cos(t f) | sin(t f)] ([sin | cos] unflipped)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)], -1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as IDDPM does), returned in the input dtype."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


NORM_EPS = 1e-5  # GroupNorm's epsilon (IDDPM's, torch's default); diffusers' DDPM models use 1e-6


def gn(channels: int, groups: int = 32, eps: float = NORM_EPS) -> GroupNorm32:
    """GroupNorm(32) as IDDPM uses it; fewer groups when channels are few (tiny models)."""
    return GroupNorm32(math.gcd(groups, channels), channels, eps=eps)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = GN(h) * (1 + scale(emb)) + shift(emb); out = skip(x) + conv(drop(SiLU(h)))."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float,
        scale_shift: bool = True,
        norm_groups: int = 32,
        eps: float = NORM_EPS,
    ):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_norm = gn(in_ch, norm_groups, eps)
        self.in_conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        if scale_shift:
            self.emb_scale = nn.Linear(emb_dim, out_ch)
            self.emb_shift = nn.Linear(emb_dim, out_ch)
        else:
            self.emb_shift = nn.Linear(emb_dim, out_ch)
        self.out_norm = gn(out_ch, norm_groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x, emb):
        h = self.in_conv(F.silu(self.in_norm(x)))
        e = F.silu(emb)
        if self.scale_shift:
            scale = self.emb_scale(e)[:, :, None, None]
            shift = self.emb_shift(e)[:, :, None, None]
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + self.emb_shift(e)[:, :, None, None])
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


_STREAM_ONLY = False  # True inside ``stream_only()``


@contextlib.contextmanager
def stream_only():
    """While a pruner traces the graph, attention blocks show only their residual coupling (x -> x)."""
    global _STREAM_ONLY
    _STREAM_ONLY = True
    try:
        yield
    finally:
        _STREAM_ONLY = False


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions with a chunk-ordered qkv projection.

    For structural pruning the block is one unit: its residual-stream channels (``norm``, the input of
    ``qkv``, the output of ``proj``) are coupled to the stream around it, and its head dimension
    (the output of ``qkv`` per chunk and head, the input of ``proj``) is internal to it. See ``prune.py``.
    """

    def __init__(self, channels: int, num_heads: int, norm_groups: int = 32, eps: float = NORM_EPS):
        super().__init__()
        assert channels % num_heads == 0, f"{channels} channels not divisible by {num_heads} heads"
        self.num_heads = num_heads
        # softmax(q k^T / sqrt(d)) with sqrt(d) split evenly over q and k (IDDPM), fixed here
        # so that pruning the head size does not change what the block computes.
        self.scale = 1.0 / math.sqrt(math.sqrt(channels // num_heads))
        self.norm = gn(channels, norm_groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))
        self.attn_macs = 0  # attention matmul MACs of the last forward pass (per sample)

    def forward(self, x, emb=None):
        if _STREAM_ONLY:
            return x * 1.0  # the output channels are the input channels (residual), nothing else
        b, c, hgt, wid = x.shape
        hw = hgt * wid
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        q = q.reshape(b, self.num_heads, -1, hw)
        k = k.reshape(b, self.num_heads, -1, hw)
        v = v.reshape(b, self.num_heads, -1, hw)
        w = torch.einsum("bhct,bhcs->bhts", q * self.scale, k * self.scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bhts,bhcs->bhct", w, v).reshape(b, -1, hgt, wid)
        # q k^T and w v: two (hw x hw x c) products per sample
        self.attn_macs = 2 * hw * hw * q.shape[1] * q.shape[2]
        return x + self.proj(a)


class Downsample(nn.Module):
    """A stride-2 3x3 conv; ``padding`` 1: one pixel on every side (IDDPM), 0: one on the right and bottom only
    (DDPM's TF "SAME" padding, diffusers' ``downsample_padding=0``). Same output size, other pixels seen."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.pad_right = padding == 0
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x, emb=None):
        if self.pad_right:
            x = F.pad(x, (0, 1, 0, 1))
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb=None):
        w = self.conv.weight
        if w.dim() == 4 and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
            # sampling with channels-last weights (sampling.set_layout): the conv runs in that layout anyway, and
            # nearest upsampling is ~10x faster there than on an NCHW input (the same values, bit for bit)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Sequence_(nn.ModuleList):
    """A list of layers applied in turn; ResBlocks get the embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        model_channels: int = 128,
        num_res_blocks: int = 3,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        attention_resolutions: Sequence[int] = (16, 8),
        num_heads: int = 4,
        dropout: float = 0.0,
        learn_sigma: bool = True,
        scale_shift_norm: bool = True,
        norm_groups: int = 32,
        time_scale: float = 1.0,
        time_flip_sin_to_cos: bool = True,
        time_freq_shift: int = 0,
        downsample_padding: int = 1,
        norm_eps: float = NORM_EPS,
        head_channels: int = 0,
    ):
        super().__init__()
        self.image_size = image_size
        self.num_res_blocks, self.channel_mult = num_res_blocks, tuple(channel_mult)
        self.time_flip_sin_to_cos, self.time_freq_shift = bool(time_flip_sin_to_cos), int(time_freq_shift)
        # the network sees t * time_scale: 1 for models trained here, 1000/T for improved-diffusion's
        # (trained with rescale_timesteps=True); see ``model_arch``
        self.time_scale = float(time_scale)
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.learn_sigma = learn_sigma
        self.model_channels = model_channels
        emb_dim = model_channels * 4
        # attention resolutions are given in pixels (16, 8) and turned into downsample rates
        attn_ds = {image_size // r for r in attention_resolutions}

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, dropout, scale_shift_norm, norm_groups, norm_eps)

        def attn(c):  # diffusers: c // head_channels heads of head_channels each
            return AttentionBlock(c, c // head_channels if head_channels else num_heads, norm_groups, norm_eps)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # the first conv gets no embedding
        self.input_blocks = nn.ModuleList([_Plain(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_chs = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(Sequence_(layers))
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Sequence_([Downsample(ch, downsample_padding)]))
                skip_chs.append(ch)
                ds *= 2

        self.middle_block = Sequence_([res(ch, ch), attn(ch), res(ch, ch)])

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Sequence_(layers))

        self.out_norm = gn(ch, norm_groups, norm_eps)
        self.out_conv = zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.time_scale != 1.0:
            t = t.float() * self.time_scale
        emb = timestep_embedding(
            t, self.model_channels, flip_sin_to_cos=self.time_flip_sin_to_cos, freq_shift=self.time_freq_shift
        )
        emb = self.time_embed(emb.to(x.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))

    def attention_macs(self) -> int:
        """Attention matmul MACs per sample of the last forward pass (not seen by module counters)."""
        return sum(m.attn_macs for m in self.modules() if isinstance(m, AttentionBlock))


class _Plain(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, emb=None):
        return self.layer(x)


def build_unet(cfg: dict, seed: int | None = None) -> UNet:
    """Build the UNet from an architecture (``model_arch``, or a config's ``model`` section); with ``seed``,
    its initial weights depend on it alone."""
    if cfg.get("rescale_timesteps") and "time_scale" not in cfg:
        raise ValueError("a model with rescale_timesteps needs its time_scale: build it from model_arch(cfg)")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_unet(cfg)
    model = UNet(
        image_size=cfg["image_size"],
        in_channels=cfg["in_channels"],
        model_channels=cfg["model_channels"],
        num_res_blocks=cfg["num_res_blocks"],
        channel_mult=tuple(cfg["channel_mult"]),
        attention_resolutions=tuple(cfg["attention_resolutions"]),
        num_heads=cfg["num_heads"],
        dropout=cfg["dropout"],
        learn_sigma=cfg["learn_sigma"],
        scale_shift_norm=cfg.get("scale_shift_norm", True),
        norm_groups=cfg.get("norm_groups", 32),
        time_scale=cfg.get("time_scale", 1.0),
        # diffusers' UNet2DModel (unet2d.py); absent from older architectures: IDDPM's behaviour
        time_flip_sin_to_cos=cfg.get("time_flip_sin_to_cos", True),
        time_freq_shift=cfg.get("time_freq_shift", 0),
        downsample_padding=cfg.get("downsample_padding", 1),
        norm_eps=cfg.get("norm_eps", NORM_EPS),
        head_channels=cfg.get("head_channels", 0),
    )
    # the layout's family (config model.family): a diffusers model's attention heads keep their size, so
    # pruning never cuts head dimensions there (core/method/units.py)
    model.family = cfg.get("family", "iddpm")
    return model
