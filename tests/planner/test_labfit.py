"""The lab's fits in one value (planner/capacity/labfit.py) on synthetic runs of a known law, over
a family whose embedding table is V x d (so the two parameter counts differ as in a real lab)."""
import numpy as np
import pytest

from planner.capacity.isoflop import Run, level_minimum
from planner.capacity.labfit import LabPointResult, fit_lab, lab_fit_json
from planner.capacity.scaling import preset_law

LAW = preset_law("hoffmann2022")
VOCAB = 32_000


def family_point(c: float, d: int, rng, noise: float) -> LabPointResult:
    """A 12-layer-per-1024-width shape: 12 d^2 per layer, V d embedding."""
    layers = max(2, round(d / 64))
    non_embedding = 12 * layers * d * d
    total = non_embedding + VOCAB * d
    tokens = c / 6 / total
    loss = LAW.loss(total, tokens) * np.exp(rng.normal(0, noise))
    return LabPointResult(c, total, non_embedding, tokens, loss)


def synthetic_lab(noise: float = 0.002, seed: int = 0) -> list[LabPointResult]:
    rng = np.random.default_rng(seed)
    points = []
    for c in (1e17, 1e18, 1e19, 1e20):
        n_opt = LAW.optimal_params(c)
        # widths whose total count spreads from n_opt/6 to 6 n_opt
        widths = np.unique(np.round(np.geomspace(64, 8192, 200) / 64) * 64).astype(int)
        totals = np.array([12 * max(2, round(d / 64)) * d * d + VOCAB * d for d in widths])
        picks = {int(np.argmin(np.abs(np.log(totals) - np.log(t))))
                 for t in n_opt * np.geomspace(1 / 6, 6, 7)}
        points += [family_point(c, int(widths[i]), rng, noise) for i in sorted(picks)]
    return points


def test_both_counts_are_fitted_and_the_counting_choice_moves_the_exponent():
    fit = fit_lab(synthetic_lab(), isoflop_samples=100, law_samples=10)
    truth = LAW.beta / (LAW.alpha + LAW.beta)
    total, non_embedding = fit.approach2["total"], fit.approach2["non_embedding"]
    assert not total.error and not non_embedding.error
    assert total.fit.a == pytest.approx(truth, abs=0.03)
    # the embedding table's share falls as models grow, so the optimum's non-embedding count
    # grows faster with compute than its total count (Pearce & Song 2024)
    assert non_embedding.fit.a > total.fit.a + 0.05
    law = fit.approach3["total"].law
    assert law.alpha == pytest.approx(LAW.alpha, abs=0.05)
    assert law.beta == pytest.approx(LAW.beta, abs=0.05)
    assert max(abs(r) for r in fit.approach3["total"].residuals) < 0.05
    report = lab_fit_json(fit)
    assert report["approach2"]["total"]["a"]["low"] <= total.fit.a <= \
        report["approach2"]["total"]["a"]["high"]
    assert len(report["approach3"]["total"]["residuals"]) == len(synthetic_lab())


def test_a_fit_the_runs_cannot_support_is_reported_not_raised():
    one_level = [p for p in synthetic_lab() if p.flops == 1e18][:4]
    fit = fit_lab(one_level, isoflop_samples=10, law_samples=5)
    assert "at least 2 compute levels" in fit.approach2["total"].error
    assert fit.approach2["total"].fit is None
    assert "at least 5 runs" in fit.approach3["total"].error
    assert lab_fit_json(fit)["approach3"]["total"] == {"error": fit.approach3["total"].error}


@pytest.mark.parametrize("losses, words", [
    ((3.0, 3.1, 3.3, 3.6), "lowest loss at the smallest size"),
    ((3.6, 3.3, 3.1, 3.0), "lowest loss at the largest size"),
])
def test_a_level_whose_sizes_do_not_bracket_the_minimum_says_so(losses, words):
    runs = [Run(1e18, n, 1e18 / 6 / n, l) for n, l in zip((1e7, 2e7, 4e7, 8e7), losses)]
    with pytest.raises(ValueError, match=words):
        level_minimum(runs)
