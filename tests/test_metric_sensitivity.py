"""The primary metric sees what a person sees: at the tiny preset's default sample count, digits with a
speckled background or thinned strokes (the damage seen in under-trained progressive grids) score worse
than the same digits clean, beyond the metric's 95% interval."""

import pytest
import torch

from core import config as C
from core.evaluation import features as F
from core.evaluation import metrics as M
from core.evaluation.perturb import speckle, thin
from core.training.data import load_dataset


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    cfg = C.resolve("tiny", None, [])
    data = load_dataset(cfg, split="all")
    ext, info = F.make_extractor(cfg, data, tmp_path_factory.mktemp("runs"), log=lambda s: None)
    ref = F.reference_stats(ext, info, data, cfg, tmp_path_factory.mktemp("runs"))
    n = cfg["eval"]["fid_n"]
    clean = data.get(torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:n])
    feats = {
        name: F.features(ext, imgs)
        for name, imgs in (("clean", clean), ("speckle", speckle(clean)), ("thin", thin(clean)))
    }
    return cfg, feats, M.RefStats.of(ref["mu"], ref["sigma"]), ref["feats"]


@pytest.mark.parametrize("damage", ["speckle", "thin"])
@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_damaged_digits_score_worse_beyond_the_interval_at_the_default_n(scored, damage, metric):
    cfg, feats, stats, ref = scored
    d = M.difference(feats[damage], feats["clean"], stats, ref, metric, paired=True, reps=cfg["eval"]["bootstrap"])
    assert M.verdict(d) == "worse", d
    assert d["ci"][0] > 0


def test_the_damage_is_small_in_pixels():
    """The check is not trivial: speckle touches ~2% of the background, thinning removes a one-pixel rim."""
    x = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 8:24, 14:18] = 255
    s = speckle(x)
    assert 0.005 < (s != x).float().mean().item() < 0.03
    t = thin(x)
    assert (t[:, :, 8:23, 14:17] == 255).all() and (t[:, :, :, 17] == 0).all()
