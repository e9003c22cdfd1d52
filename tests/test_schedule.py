import json

import numpy as np
import pytest
import torch

from core.method.progressive import ProgressiveDenoiser
from core.method.schedule import budget_ratios, make_schedule, snr_db
from core.model.diffusion import GaussianDiffusion, betas_for
from core.model.macs import progressive_cost
from core.model.respace import respaced, space_timesteps
from core.model.unet import UNet
from tests.conftest import assert_clean_error, run_cli

AB = GaussianDiffusion(betas_for("cosine", 4000)).alphas_cumprod


def test_snr_matches_eq7():
    assert snr_db(np.array([0.5]))[0] == pytest.approx(0.0)
    assert snr_db(np.array([0.9]))[0] == pytest.approx(10 * np.log10(9))


def test_cosine_4000_groups_partition_all_timesteps():
    s = make_schedule(AB, "snr", 0.5, 10, full_macs=8_144_000_000)
    sizes = [g.size for g in s.groups]
    assert sum(sizes) == 4000
    seen = sorted(t for g in s.groups for t in g.timesteps)
    assert seen == list(range(4000))  # every timestep in exactly one group
    nonempty = s.nonempty
    for a, b in zip(nonempty, nonempty[1:]):  # contiguous and ordered
        assert a.index < b.index and a.t_end + 1 == b.t_start
    for g in nonempty:
        assert g.timesteps == list(range(g.t_start, g.t_end + 1))
    # the clipped last beta makes t = T-1 an outlier: alone in the top group, the one below is empty
    assert s.groups[9].timesteps == [3999]
    assert s.groups[8].size == 0
    # group budgets are the upper limits k + (1-k)(i+1)/N, and each timestep's budget is within its group's interval
    for g in s.groups:
        assert g.budget_ratio == pytest.approx(0.5 + 0.05 * (g.index + 1))
        if g.size:
            r = s.ratio[g.timesteps]
            assert r.max() <= g.budget_ratio + 1e-12
            assert g.index == 0 or r.min() > g.budget_ratio - 0.05
    assert s.groups[0].budget_macs == round(0.55 * 8_144_000_000)


def test_snr_budget_is_monotone_and_spans_k_to_1():
    r = budget_ratios(AB, "snr", 0.5)
    assert np.all(np.diff(r) >= 0)
    assert r.min() == pytest.approx(0.5) and r.max() == pytest.approx(1.0)


def test_comparison_schedules_behave_as_named():
    inc = make_schedule(AB, "increasing", 0.5, 10)
    dec = make_schedule(AB, "decreasing", 0.5, 10)
    con = make_schedule(AB, "constant", 0.5, 10)
    assert np.all(np.diff(inc.ratio) > 0) and np.all(np.diff(dec.ratio) < 0)
    assert inc.ratio[0] == pytest.approx(0.5) and inc.ratio[-1] == pytest.approx(1.0)
    assert np.allclose(con.ratio, 0.75)
    assert [g.size for g in inc.groups] == [400] * 10
    assert dec.groups[0].t_start == 3600 and dec.groups[9].t_end == 399  # cheapest group holds the last steps
    assert [g.size for g in con.groups] == [400] * 10 and all(g.budget_ratio == 0.75 for g in con.groups)
    eq = make_schedule(AB, "equal", 0.5, 10)
    assert [g.size for g in eq.groups] == [400] * 10
    assert all(g.budget_ratio == pytest.approx(eq.ratio[g.t_end]) for g in eq.groups)


def test_average_budget_is_the_mean_over_timesteps_of_each_ones_group_budget():
    """Computed here from Eq. 7-10 alone, without the schedule's groups: SNR in dB, normalised -SNR scaled to
    [k, 1], each timestep's group i = ceil((r - k) / (1 - k) N) - 1, its budget the upper limit
    k + (1 - k)(i + 1) / N; the mean over the 4000 timesteps of cosine IDDPM is 0.695 F."""
    k, n = 0.5, 10
    snr = 10 * np.log10(AB / (1 - AB))
    z = (-snr - (-snr).mean()) / (-snr).std()
    r = k + (1 - k) * (z - z.min()) / (z.max() - z.min())
    i = np.clip(np.ceil((r - k) / (1 - k) * n - 1e-9).astype(int) - 1, 0, n - 1)
    hand = float(np.mean(k + (1 - k) * (i + 1) / n))
    s = make_schedule(AB, "snr", k, n)
    assert s.avg_budget_ratio == pytest.approx(hand)
    assert round(hand, 3) == 0.695


class GroupId(torch.nn.Module):
    """A stand-in group model that answers with its own group id (and counts what it was given)."""

    out_channels = 1

    def __init__(self, g):
        super().__init__()
        self.g = g
        self.seen = []

    def forward(self, x, t):
        self.seen.extend(t.tolist())
        return torch.full((x.shape[0], 1, *x.shape[2:]), float(self.g))


def test_routing_sends_each_timestep_to_its_group_model():
    s = make_schedule(AB, "snr", 0.5, 10)
    models = {g.index: GroupId(g.index) for g in s.nonempty}
    prog = ProgressiveDenoiser(models, s.group_of)
    t = torch.tensor([3999, 0, 2000, 3995, 21, 22, 3999, 1500])
    out = prog(torch.zeros(len(t), 1, 2, 2), t)
    assert out[:, 0, 0, 0].tolist() == [float(s.group_of[i]) for i in t.tolist()]
    # respaced sampling: each step reaches the model as its original timestep
    proc = respaced(GaussianDiffusion(betas_for("cosine", 4000)), 100)
    for m in models.values():
        m.seen.clear()
    wrapped = lambda x, tt: torch.cat([prog(x, tt), torch.zeros_like(x)], 1)
    proc.sample(wrapped, (1, 1, 2, 2))
    for g, m in models.items():
        assert all(s.group_of[t] == g for t in m.seen)
    assert sorted(t for m in models.values() for t in m.seen) == sorted(proc.timestep_map.tolist())


def test_routing_rejects_a_table_without_models():
    with pytest.raises(ValueError):
        ProgressiveDenoiser({0: GroupId(0)}, [0, 1])


def test_average_macs_is_the_weighted_mean_of_group_models():
    small = dict(
        image_size=16, in_channels=1, channel_mult=(1, 2), attention_resolutions=(8,), num_heads=2, num_res_blocks=1
    )
    models = {0: UNet(model_channels=8, **small), 1: UNet(model_channels=16, **small)}
    group_of = [0] * 30 + [1] * 10
    cost = progressive_cost(ProgressiveDenoiser(models, group_of), 16, 1, sample_steps=5)
    m0, m1 = cost["groups"][0]["macs"], cost["groups"][1]["macs"]
    assert m1 > 2 * m0
    assert cost["avg_all"]["macs"] == pytest.approx((30 * m0 + 10 * m1) / 40)
    # 5 respaced steps of 40: 0, 10, 20, 29, 39 -> four in group 0, one in group 1
    assert space_timesteps(40, 5) == [0, 10, 20, 29, 39]
    assert cost["avg_sampled"]["macs"] == pytest.approx((4 * m0 + 1 * m1) / 5)


def test_schedule_cli_json_and_plot(tmp_path):
    png = tmp_path / "s.png"
    p = run_cli("schedule", "--preset", "cifar10", "--json", "--plot", png, check=0)
    d = json.loads(p.stdout)
    assert {"groups", "avg_budget_ratio"} <= set(d)
    assert {"index", "t_start", "t_end", "size", "budget_ratio", "budget_macs"} <= set(d["groups"][0])
    assert d["full_macs"] == pytest.approx(8.144e9, rel=1e-3)
    assert sum(g["size"] for g in d["groups"]) == 4000 and d["empty_groups"] == [8]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    p = run_cli("schedule", "--kind", "increasing", "--n-groups", "4", "--k", "0.25", "--json", check=0)
    d = json.loads(p.stdout)
    assert [g["budget_ratio"] for g in d["groups"]] == pytest.approx([0.4375, 0.625, 0.8125, 1.0])
    assert_clean_error(run_cli("schedule", "--k", "1.5"))
    assert_clean_error(run_cli("schedule", "--n-groups", "0"))


def test_the_reversed_snr_schedule_gives_the_smallest_budget_to_the_high_noise_end():
    """snr-reversed mirrors Eq. 8's ratio: FLOPs(t) = (k + (1 - k)(1 - Ratio(t))) F, so the noisiest step gets kF
    and the cleanest F, the opposite of the paper's schedule, and every timestep still lands in one group."""
    ac = np.cumprod(1.0 - betas_for("cosine", 1000))
    paper, rev = budget_ratios(ac, "snr", 0.5), budget_ratios(ac, "snr-reversed", 0.5)
    assert np.allclose(paper + rev, 1.5)  # k + (1 - k) r  and  k + (1 - k)(1 - r) sum to 1 + k
    assert rev[-1] == pytest.approx(0.5) and rev[0] == pytest.approx(1.0) and paper[-1] == pytest.approx(1.0)
    sched = make_schedule(ac, "snr-reversed", 0.5, 10)
    assert sum(g.size for g in sched.groups) == 1000
    assert sched.group_of[999] == 0 and sched.group_of[0] == 9  # the noisiest steps in the smallest group
