import math

import numpy as np
import torch

from core.model.diffusion import GaussianDiffusion, TimestepSampler, betas_for, discretized_gaussian_log_likelihood
from core.model.respace import SpacedDiffusion, respaced, space_timesteps


def test_cosine_schedule_matches_closed_form():
    T = 4000
    d = GaussianDiffusion(betas_for("cosine", T))
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = np.array([f(t + 1) / f(0) for t in range(T)])
    # equal wherever the beta clip at 0.999 did not bite (it only does at the very end)
    assert np.allclose(d.alphas_cumprod[:-1], expected[:-1], rtol=1e-9, atol=1e-12)
    assert d.betas.max() <= 0.999 and d.betas.min() > 0
    assert np.all(np.diff(d.alphas_cumprod) < 0)


def test_linear_schedule_endpoints():
    b = betas_for("linear", 1000)
    assert math.isclose(b[0], 1e-4) and math.isclose(b[-1], 0.02)
    b2 = betas_for("linear", 4000)
    assert math.isclose(b2[-1], 0.02 / 4)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from Gaussian conjugacy, derived independently of the coefficient formulas."""
    d = GaussianDiffusion(betas_for("cosine", 200))
    x0 = torch.tensor([[0.3]]).double()
    xt = torch.tensor([[-0.7]]).double()
    for t in [1, 5, 50, 199]:
        ab_prev, a, beta = d.alphas_cumprod[t - 1], 1 - d.betas[t], d.betas[t]
        prec = 1 / (1 - ab_prev) + a / beta
        var = 1 / prec
        mean = var * (math.sqrt(ab_prev) * 0.3 / (1 - ab_prev) + math.sqrt(a) * -0.7 / beta)
        m, v, lv = d.q_posterior_mean_variance(x0.float(), xt.float(), torch.tensor([t]))
        assert math.isclose(m.item(), mean, rel_tol=1e-5)
        assert math.isclose(v.item(), var, rel_tol=1e-5)
        assert math.isclose(lv.item(), math.log(var), rel_tol=1e-5, abs_tol=1e-5)


def test_q_sample_moments():
    d = GaussianDiffusion(betas_for("cosine", 100))
    x0 = torch.full((20000, 1), 0.5)
    t = torch.full((20000,), 60)
    xt = d.q_sample(x0, t, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)))
    ab = d.alphas_cumprod[60]
    assert abs(xt.mean().item() - math.sqrt(ab) * 0.5) < 0.02
    assert abs(xt.var().item() - (1 - ab)) < 0.03


def test_respacing_with_all_steps_is_the_original_process():
    base = GaussianDiffusion(betas_for("cosine", 50))
    sp = SpacedDiffusion(base.betas, range(50))
    assert np.allclose(sp.betas, base.betas, rtol=1e-12)
    assert np.allclose(sp.posterior_variance, base.posterior_variance)
    model = lambda x, t: torch.cat([0.1 * x + 0.001 * t.float().view(-1, 1, 1, 1), torch.zeros_like(x)], 1)
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    a = base.sample(model, noise.shape, noise=noise.clone(), generator=torch.Generator().manual_seed(2))
    b = sp.sample(model, noise.shape, noise=noise.clone(), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a, b, atol=1e-6)


def test_respaced_process_keeps_alpha_bar_and_maps_timesteps():
    base = GaussianDiffusion(betas_for("cosine", 4000))
    steps = space_timesteps(4000, 100)
    assert len(steps) == 100 and steps[0] == 0 and steps[-1] == 3999
    sp = respaced(base, 100)
    assert np.allclose(sp.alphas_cumprod, base.alphas_cumprod[steps])
    assert sp.model_t(torch.tensor([0, 99])).tolist() == [0, 3999]
    seen = []
    sp.sample(lambda x, t: (seen.append(t[0].item()), torch.zeros(x.shape[0], 2, *x.shape[2:]))[1], (1, 1, 2, 2))
    assert seen == steps[::-1]


def test_hybrid_loss_finite_and_perfect_eps_gives_zero_mse():
    d = GaussianDiffusion(betas_for("cosine", 1000))
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    oracle = lambda x, tt: torch.cat([noise, torch.zeros_like(noise)], 1)
    terms = d.training_losses(oracle, x0, t, noise)
    assert torch.isfinite(terms["loss"]).all() and torch.isfinite(terms["vb"]).all()
    assert terms["mse"].abs().max().item() < 1e-10
    # the VLB term enters with lambda * T = 0.001 * 1000
    assert torch.allclose(terms["loss"], terms["mse"] + 1.0 * terms["vb"])
    d4000 = GaussianDiffusion(betas_for("cosine", 4000))
    t4 = d4000.training_losses(oracle, x0, torch.tensor([5, 5, 5, 5]), noise)
    assert torch.allclose(t4["loss"], t4["mse"] + 4.0 * t4["vb"])


def test_vlb_at_t0_is_the_discretized_decoder_nll():
    """At t = 0 with the exact eps and v = -1 the decoder is N(x_0, beta~_1): its NLL has a closed form."""
    d = GaussianDiffusion(betas_for("cosine", 1000))
    levels = torch.tensor([-1.0, -127 / 127.5, 0.0 + 0.5 / 127.5, 1.0])  # edge, interior, interior, edge
    x0 = levels.view(1, 1, 2, 2)
    noise = torch.randn_like(x0)
    xt = d.q_sample(x0, torch.tensor([0]), noise)
    out = torch.cat([noise, -torch.ones_like(noise)], 1)
    vb = d.vb_terms_bpd(None, x0, xt, torch.tensor([0]), model_output=out).item()
    sigma = math.sqrt(d.posterior_variance[1])
    Phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    z = (1 / 255) / sigma
    interior = -math.log(Phi(z) - Phi(-z))
    edge = -math.log(Phi(z))
    expected = (2 * edge + 2 * interior) / 4 / math.log(2)
    assert math.isclose(vb, expected, rel_tol=2e-3), (vb, expected)


def test_discretized_likelihood_sums_to_one_over_levels():
    levels = torch.arange(256).float() / 127.5 - 1
    ll = discretized_gaussian_log_likelihood(levels, torch.tensor(0.1), torch.tensor(math.log(0.3)))
    assert abs(ll.exp().sum().item() - 1) < 1e-3


def test_timestep_sampler_restricted_to_a_set():
    s = TimestepSampler([7, 3, 3, 12])
    ts = s.sample(1000, torch.Generator().manual_seed(0))
    assert set(ts.tolist()) == {3, 7, 12}
    try:
        TimestepSampler([])
        assert False
    except ValueError:
        pass


def test_ddim_with_eta_zero_is_deterministic_and_ancestral_is_not():
    d = respaced(GaussianDiffusion(betas_for("cosine", 100)), 10)
    model = lambda x, t: torch.cat([0.5 * x, torch.zeros_like(x)], 1)
    noise = torch.randn(2, 1, 4, 4)
    a = d.sample(model, noise.shape, method="ddim", noise=noise.clone(), generator=torch.Generator().manual_seed(1))
    b = d.sample(model, noise.shape, method="ddim", noise=noise.clone(), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = d.sample(model, noise.shape, noise=noise.clone(), generator=torch.Generator().manual_seed(1))
    e = d.sample(model, noise.shape, noise=noise.clone(), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c, e)
