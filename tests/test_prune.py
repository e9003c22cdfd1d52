import copy
import json
import random

import pytest
import torch

from core import config as C
from core.errors import UserError
from core.method.artifacts import load_unet
from core.method.importance import DiffPruningImportance, LossContext, TaylorImportance, make_importance
from core.method.prune import (
    Pruner,
    apply_plan,
    build_pruned,
    measure,
    plan_from_counts,
    prune_to_budget,
    removal_counts,
    units_of,
    validate_plan,
)
from core.model.diffusion import create_diffusion
from core.model.unet import AttentionBlock, build_unet
from core.names import IMPORTANCE_METHODS as METHODS
from tests.conftest import MICRO, assert_clean_error, run_cli


def randomized(preset):
    """A built (untrained) model whose zero-initialised output convs are given weights, so outputs depend on all."""
    cfg = C.preset(preset)
    m = build_unet(cfg["model"], seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return cfg, m.eval()


def context(cfg, n_t=(100, 300), batch=2):
    m = cfg["model"]
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(
        0, 256, (24, m["in_channels"], m["image_size"], m["image_size"]), generator=g, dtype=torch.uint8
    )
    return LossContext(create_diffusion(cfg), imgs[:16], imgs[16:], list(range(*n_t)), batch_size=batch, batches=1)


def importance(method):
    if method == "diff":
        return DiffPruningImportance(steps=3)
    return make_importance(method, seed=0)


def probe(cfg):
    m = cfg["model"]
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, m["in_channels"], m["image_size"], m["image_size"], generator=g), torch.tensor([5, 250])


@pytest.mark.parametrize("preset", ["tiny", "cifar10"])
def test_every_method_meets_budgets_from_half_to_full(preset):
    cfg, base = randomized(preset)
    pr = Pruner(base)
    F = pr.full["macs"]
    ctx = context(cfg, batch=2 if preset == "tiny" else 1)
    x, t = probe(cfg)
    ref = base(x, t)
    for method in METHODS:
        scores = pr.scores(importance(method), ctx)
        for ratio in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            plan, macs, _ = pr.plan_for_budget(scores, ratio * F, pr.shape(scores, "uniform"))
            assert 0.97 * ratio * F <= macs <= ratio * F, (method, ratio, macs / F)
            if ratio == 1.0:
                assert plan["remove"] == {}
        pruned = pr.apply(pr.plan_for_budget(scores, 0.5 * F, pr.shape(scores, "uniform"))[0])
        real = measure(pruned)["macs"]
        assert 0.97 * 0.5 * F <= real <= 0.5 * F, (method, real / F)
        y = pruned(x, t)
        assert y.shape == ref.shape and torch.isfinite(y).all()
    # global allocation reaches the budget too
    scores = pr.scores(importance("magnitude"))
    plan, macs, _ = pr.plan_for_budget(scores, 0.5 * F, pr.shape(scores, "global"))
    assert 0.97 * 0.5 * F <= measure(pr.apply(plan))["macs"] <= 0.5 * F


def test_attention_and_groupnorm_stay_valid_and_attention_is_pruned():
    cfg, base = randomized("cifar10")
    pr = Pruner(base)
    scores = pr.scores(importance("random"))
    plan, _, _ = pr.plan_for_budget(scores, 0.5 * pr.full["macs"], pr.shape(scores, "uniform"))
    pruned = pr.apply(plan)
    blocks = [(a, b) for a, b in zip(base.modules(), pruned.modules()) if isinstance(a, AttentionBlock)]
    assert blocks
    for a, b in blocks:
        assert b.num_heads == a.num_heads and b.scale == a.scale
        assert b.qkv.out_channels == 3 * b.proj.in_channels and b.proj.in_channels % b.num_heads == 0
        assert b.proj.out_channels < a.proj.out_channels  # the streams around attention are pruned, not frozen
    assert any(b.proj.in_channels < a.proj.in_channels for a, b in blocks)  # and the head dimension
    for a, b in zip(base.modules(), pruned.modules()):
        if isinstance(a, torch.nn.GroupNorm):
            assert b.num_groups == a.num_groups and b.num_channels % b.num_groups == 0
    assert pruned.out_conv.out_channels == base.out_conv.out_channels
    assert pruned.input_blocks[0].layer.in_channels == base.in_channels


def test_mac_model_matches_the_counter_on_random_plans():
    cfg, base = randomized("tiny")
    pr = Pruner(base)
    rng = random.Random(0)
    scores = {u.name: torch.rand(u.size) for u in pr.units}
    for _ in range(4):
        counts = {u.name: rng.randint(0, u.size // u.blocks - 1) * u.blocks for u in pr.units}
        plan = plan_from_counts(pr.units, scores, counts)
        real = measure(pr.apply(plan))
        assert pr.mac_model.count(removal_counts(plan)) == {"macs": real["macs"], "attn_macs": real["attn_macs"]}


def test_full_budget_is_the_identity():
    cfg, base = randomized("tiny")
    x, t = probe(cfg)
    pruned, plan, rep = prune_to_budget(base, importance("magnitude"), measure(base)["macs"])
    assert plan["remove"] == {} and rep["macs_ratio"] == 1.0
    assert torch.equal(pruned(x, t), base(x, t))


def test_base_plus_plan_rebuilds_the_pruned_weights_and_round_trips(tmp_path):
    cfg, base = randomized("tiny")
    ctx = context(cfg)
    pruned, plan, rep = prune_to_budget(base, importance("taylor"), 0.6 * measure(base)["macs"], ctx)
    plan = json.loads(json.dumps(plan))  # plans are JSON
    again = apply_plan(copy.deepcopy(base), plan)
    sa, sb = pruned.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.save({"arch": cfg["model"], "plan": plan, "state": sa}, tmp_path / "m.pt")
    loaded = load_unet(tmp_path / "m.pt")
    x, t = probe(cfg)
    assert torch.equal(loaded(x, t), pruned(x, t))
    assert torch.equal(build_pruned(cfg["model"], plan, sa)(x, t), pruned(x, t))
    assert rep["loss_before"] > 0 and rep["loss_after"] > 0


def test_same_seed_same_plan():
    cfg, base = randomized("tiny")
    F = measure(base)["macs"]
    plans = [prune_to_budget(base, make_importance("random", s), 0.7 * F)[1] for s in (0, 0, 1)]
    assert plans[0] == plans[1] and plans[0] != plans[2]
    ctx = context(cfg)
    t1 = prune_to_budget(base, TaylorImportance(), 0.7 * F, ctx)[1]
    t2 = prune_to_budget(base, TaylorImportance(), 0.7 * F, ctx)[1]
    assert t1 == t2


def test_bad_budgets_and_foreign_plans():
    cfg, base = randomized("tiny")
    with pytest.raises(UserError, match="below what pruning can reach"):
        prune_to_budget(base, importance("magnitude"), 0.01 * measure(base)["macs"])
    _, big = randomized("cifar10")
    pr = Pruner(big)
    scores = pr.scores(importance("magnitude"))
    foreign, _, _ = pr.plan_for_budget(scores, 0.6 * pr.full["macs"], pr.shape(scores, "uniform"))
    with pytest.raises(UserError, match="does not fit this model"):
        apply_plan(copy.deepcopy(base), foreign)
    units = units_of(base)
    u = next(u for u in units if u.blocks > 1)
    with pytest.raises(ValueError, match="same number of positions"):
        validate_plan({"version": 1, "remove": {u.name: [0]}}, units)


def test_prune_cli_end_to_end(runs_dir):
    rd = ["--runs-dir", runs_dir]
    run_cli(
        "train",
        "--preset",
        "tiny",
        "--name",
        "pr",
        "--train-steps",
        "3",
        *MICRO,
        "-S",
        "schedule.groups=3",
        "-S",
        "model.norm_groups=8",
        "-S",
        "prune.images=8",
        "-S",
        "prune.eval_images=4",
        "-S",
        "prune.batch_size=2",
        "-S",
        "prune.batches=1",
        *rd,
        check=0,
    )
    p = run_cli("prune", "pr", "--method", "nonsense", *rd)
    assert p.returncode != 0 and not (runs_dir / "pr" / "prune").exists()
    p = run_cli("prune", "pr", "--method", "taylor", "--json", *rd, check=0)
    recs = json.loads(p.stdout)
    sched = json.loads((runs_dir / "pr" / "schedule.json").read_text())
    assert [r["group"] for r in recs] == [g["index"] for g in sched["groups"] if g["size"]]
    for r in recs:
        assert r["report"]["within_tolerance"] and r["report"]["macs"] <= r["budget_macs"]
        assert (runs_dir / "pr" / "prune" / f"group{r['group']:02d}.json").exists()
    assert_clean_error(run_cli("prune", "pr", "--method", "magnitude", *rd))  # already pruned another way
    run_cli("prune", "pr", "--method", "taylor", *rd, check=0)  # the same way: skipped
    run_cli("finetune", "pr", "--finetune-steps", "1", *rd, check=0)
    m = json.loads(run_cli("macs", "pr", "--json", *rd, check=0).stdout)
    avg = m["progressive"]["avg_all"]["macs"]
    expected = (
        sum(r["report"]["macs"] * g["size"] for r, g in zip(recs, [g for g in sched["groups"] if g["size"]])) / 100
    )
    assert avg == pytest.approx(expected) and avg < m["base"]["macs"]
