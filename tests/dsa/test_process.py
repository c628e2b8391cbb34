"""Tests of hwdsa.dsa.process: the keep probabilities, their implicit gradient, masks, aggregation, β2 schedule."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from hwdsa.dsa.process import (
    Beta2Schedule,
    deterministic_masks,
    keep_probabilities,
    sample_masks,
    solve_threshold,
)
from hwdsa.errors import ConfigError, KeepRatioError
from hwdsa.importance import IMPORTANCE_AGGREGATIONS, aggregate_importance

SIZES = (1, 3, 16, 64, 7)  # mixed group sizes, padded to 64


def padded(sizes: tuple[int, ...] = SIZES, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Log-normal importances (BatchNorm |γ|-like, spanning decades) with a zero and a tie per group."""
    g = torch.Generator().manual_seed(seed)
    imp = torch.exp(2.0 * torch.randn(len(sizes), max(sizes), generator=g, dtype=torch.float64))
    valid = torch.arange(max(sizes))[None, :] < torch.tensor(sizes)[:, None]
    for i, c in enumerate(sizes):
        if c >= 3:
            imp[i, 0] = 0.0  # a dead channel
            imp[i, 2] = imp[i, 1]  # a tie
    imp = imp.masked_fill(~valid, 123.0)  # padding must never matter
    return imp.to(dtype), valid


def group_means(p: Tensor, valid: Tensor) -> Tensor:
    return (p * valid).sum(dim=1) / valid.sum(dim=1)


def closed_form_gradient(imp: Tensor, valid: Tensor, alpha: Tensor, beta2: float, floor: float) -> Tensor:
    """∂p_c/∂α_g = C·s(1 − s)/Σ s(1 − s), straight from the design note, as a [G, Cmax] matrix."""
    log_b = torch.log(imp.clamp_min(0) + 1e-12 * (imp * valid).amax(1, keepdim=True) + 1e-300)
    t = solve_threshold(imp, valid, alpha, beta2, floor=floor)
    s = torch.sigmoid(beta2 * (log_b - t[:, None])) * valid
    w = s * (1 - s)
    return valid.sum(1, keepdim=True) * w / w.sum(1, keepdim=True)


class TestExpectationConstraint:
    @pytest.mark.parametrize("beta2", [0.5, 1.0, 5.0, 50.0])
    @pytest.mark.parametrize("alpha", [0.01, 0.0105, 0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
    def test_mean_keep_probability_equals_keep_ratio(self, beta2: float, alpha: float) -> None:
        imp, valid = padded()
        ratios = torch.full((len(SIZES),), alpha, dtype=torch.float64)
        p = keep_probabilities(imp, valid, ratios, beta2, floor=0.01)
        assert float((group_means(p, valid) - alpha).abs().max()) < 1e-5
        assert bool(((p >= 0.01 - 1e-12) & (p <= 1.0)).logical_or(~valid).all())
        assert bool((p[~valid] == 0).all())

    @pytest.mark.parametrize("beta2", [0.5, 50.0])
    def test_random_mixed_ratios_in_float32_and_without_floor(self, beta2: float) -> None:
        imp, valid = padded(seed=3, dtype=torch.float32)
        ratios = torch.tensor([0.001, 0.2, 0.37, 0.81, 1.0], dtype=torch.float32)
        p = keep_probabilities(imp, valid, ratios, beta2, floor=0.0)
        assert p.dtype == torch.float32
        assert float((group_means(p.double(), valid) - ratios.double()).abs().max()) < 1e-5

    def test_single_channel_group_keeps_with_probability_alpha(self) -> None:
        p = keep_probabilities(torch.tensor([[2.0]]), torch.tensor([[True]]), torch.tensor([0.3]), 1.0)
        torch.testing.assert_close(p, torch.tensor([[0.3]]))

    def test_order_follows_importance_and_zero_importance_is_least_kept(self) -> None:
        imp, valid = padded()
        p = keep_probabilities(imp, valid, torch.full((5,), 0.5, dtype=torch.float64), 2.0)
        row, n = 3, SIZES[3]
        order_imp = torch.argsort(imp[row, :n], stable=True)
        assert bool((p[row, :n][order_imp].diff() >= -1e-15).all())  # p non-decreasing in importance
        assert int(p[row, :n].argmin()) == 0  # the dead channel
        assert float(p[row, 1]) == float(p[row, 2])  # tied importances, tied probabilities

    def test_all_zero_importance_gives_uniform_probabilities(self) -> None:
        imp = torch.zeros(1, 8, dtype=torch.float64)
        p = keep_probabilities(imp, torch.ones(1, 8, dtype=torch.bool), torch.tensor([0.25], dtype=torch.float64), 5.0)
        torch.testing.assert_close(p, torch.full((1, 8), 0.25, dtype=torch.float64))

    def test_batch_equals_one_group_at_a_time(self) -> None:
        imp, valid = padded()
        ratios = torch.tensor([0.4, 0.1, 0.6, 0.7, 0.95], dtype=torch.float64)
        batched = keep_probabilities(imp, valid, ratios, 3.0)
        for g, c in enumerate(SIZES):
            alone = keep_probabilities(imp[g : g + 1, :c], valid[g : g + 1, :c], ratios[g : g + 1], 3.0)
            torch.testing.assert_close(batched[g, :c], alone[0], rtol=0, atol=1e-12)

    def test_scale_of_importance_does_not_matter(self) -> None:
        imp, valid = padded()
        ratios = torch.full((5,), 0.4, dtype=torch.float64)
        torch.testing.assert_close(
            keep_probabilities(imp, valid, ratios, 2.0), keep_probabilities(1e-6 * imp, valid, ratios, 2.0), rtol=0, atol=1e-12
        )

    def test_threshold_is_the_geometric_mean_for_two_channels(self) -> None:
        t = solve_threshold(torch.tensor([[1.0, 4.0]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([0.5]), 1.0, floor=0.0)
        assert t.dtype == torch.float32
        assert math.isclose(float(t.exp()), 2.0, rel_tol=1e-6)

    def test_ratio_below_floor_is_clamped_and_gets_no_gradient(self) -> None:
        imp, valid = padded()
        ratios = torch.full((5,), 0.005, dtype=torch.float64, requires_grad=True)
        p = keep_probabilities(imp, valid, ratios, 1.0, floor=0.01)
        torch.testing.assert_close(group_means(p.detach(), valid), torch.full((5,), 0.01, dtype=torch.float64))
        p.sum().backward()
        assert ratios.grad is not None and bool((ratios.grad == 0).all())


class TestImplicitGradient:
    @pytest.mark.parametrize("beta2", [0.5, 1.0, 5.0, 50.0])
    @pytest.mark.parametrize("floor", [0.0, 0.01])
    def test_linear_expected_loss_matches_finite_differences(self, beta2: float, floor: float) -> None:
        imp, valid = padded()
        w = torch.randn(imp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        ratios = torch.tensor([0.3, 0.07, 0.5, 0.62, 0.93], dtype=torch.float64)

        def expected_loss(a: Tensor) -> Tensor:
            return (keep_probabilities(imp, valid, a, beta2, floor=floor) * w).sum()

        a = ratios.clone().requires_grad_(True)
        expected_loss(a).backward()
        assert a.grad is not None
        h = 1e-6
        for g in range(len(SIZES)):
            e = torch.zeros_like(ratios)
            e[g] = h
            fd = (expected_loss(ratios + e) - expected_loss(ratios - e)) / (2 * h)
            assert abs(float(a.grad[g]) - float(fd)) <= 1e-8 * (1 + abs(float(fd)))

    @pytest.mark.parametrize("beta2", [1.0, 5.0])
    def test_matches_the_closed_form(self, beta2: float) -> None:
        imp, valid = padded()
        ratios = torch.tensor([0.3, 0.2, 0.5, 0.62, 0.93], dtype=torch.float64)
        jac = closed_form_gradient(imp, valid, ratios, beta2, floor=0.01)
        w = torch.randn(imp.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        a = ratios.clone().requires_grad_(True)
        (keep_probabilities(imp, valid, a, beta2) * w).sum().backward()
        assert a.grad is not None
        torch.testing.assert_close(a.grad, (jac * w * valid).sum(1), rtol=1e-10, atol=1e-12)

    def test_conv_layer_expected_loss_matches_finite_differences(self) -> None:
        gen = torch.Generator().manual_seed(4)
        conv = torch.nn.Conv2d(3, 6, 3, padding=1).double()
        head = torch.nn.Conv2d(6, 2, 1).double()
        x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
        target = torch.randn(2, 2, 5, 5, generator=gen, dtype=torch.float64)
        imp = conv.weight.detach().abs().sum(dim=(1, 2, 3))[None, :]  # L1 filter norms, one group of 6
        valid = torch.ones_like(imp, dtype=torch.bool)

        def expected_loss(a: Tensor) -> Tensor:
            p = keep_probabilities(imp, valid, a, 2.0)
            return torch.nn.functional.mse_loss(head(torch.relu(conv(x) * p[0][None, :, None, None])), target)

        a = torch.tensor([0.55], dtype=torch.float64, requires_grad=True)
        expected_loss(a).backward()
        assert a.grad is not None and conv.weight.grad is not None  # weights still get their gradient
        h = 1e-6
        with torch.no_grad():
            fd = (expected_loss(a.detach() + h) - expected_loss(a.detach() - h)) / (2 * h)
        assert abs(float(a.grad[0]) - float(fd)) <= 1e-7 * (1 + abs(float(fd)))

    def test_saturated_ratios_keep_a_finite_gradient(self) -> None:
        imp, valid = padded()
        a = torch.tensor([1.0, 0.01, 1.0, 1.0, 0.01], dtype=torch.float64, requires_grad=True)
        p = keep_probabilities(imp, valid, a, 50.0, floor=0.01)
        p.sum().backward()
        assert a.grad is not None and bool(torch.isfinite(a.grad).all())
        # Σ_c ∂p_c/∂α = C: the mean constraint differentiated.
        torch.testing.assert_close(a.grad, torch.tensor(SIZES, dtype=torch.float64))

    def test_importance_gets_no_gradient(self) -> None:
        imp, valid = padded()
        imp.requires_grad_(True)
        a = torch.full((5,), 0.5, dtype=torch.float64, requires_grad=True)
        keep_probabilities(imp, valid, a, 1.0).sum().backward()
        assert imp.grad is None and a.grad is not None


class TestDeterministicLimit:
    def test_probabilities_approach_the_top_k_mask_as_beta2_grows(self) -> None:
        sizes = (8, 16, 5)
        imp = torch.exp(torch.randn(3, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
        valid = torch.arange(16)[None, :] < torch.tensor(sizes)[:, None]
        k = torch.tensor([3, 10, 1])
        ratios = k.double() / torch.tensor(sizes, dtype=torch.float64)
        top_k = deterministic_masks(imp, valid, k).double()
        gaps = []
        for beta2 in (1.0, 5.0, 50.0, 500.0, 5000.0):
            p = keep_probabilities(imp, valid, ratios, beta2, floor=0.0)
            gaps.append(float((p - top_k).abs().max()))
        assert all(b < a for a, b in zip(gaps, gaps[1:]))
        assert gaps[-1] < 1e-6

    def test_top_k_keeps_the_most_important_with_ties_to_the_lower_index(self) -> None:
        imp = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 0.0, 0.0]])
        valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
        m = deterministic_masks(imp, valid, torch.tensor([3, 2]))
        assert m.dtype == torch.bool
        assert m.tolist() == [[True, True, True, False, False], [True, True, False, False, False]]

    def test_top_k_counts_and_padding(self) -> None:
        imp, valid = padded()
        k = [1, 0, 16, 33, 7]
        m = deterministic_masks(imp, valid, k)
        assert m.sum(1).tolist() == k
        assert not bool((m & ~valid).any())

    @pytest.mark.parametrize("channels, match", [([1, 2, 3, 4, 8], "group 4: channel count 8 outside 0..7"), ([1, -1, 1, 1, 1], "group 1")])
    def test_top_k_rejects_counts_outside_the_group(self, channels: list[int], match: str) -> None:
        imp, valid = padded()
        with pytest.raises(KeepRatioError, match=match):
            deterministic_masks(imp, valid, channels)

    def test_top_k_rejects_the_wrong_number_of_counts(self) -> None:
        imp, valid = padded()
        with pytest.raises(KeepRatioError, match="one channel count per group"):
            deterministic_masks(imp, valid, [1, 2])

    def test_top_k_rejects_fractional_counts(self) -> None:
        imp, valid = padded()
        with pytest.raises(KeepRatioError, match="whole numbers"):
            deterministic_masks(imp, valid, torch.tensor([1.0, 1.5, 1.0, 1.0, 1.0]))


class TestSampling:
    def test_masks_are_binary_and_respect_certain_probabilities(self) -> None:
        p = torch.tensor([[0.0, 1.0, 0.3, 0.7], [1.0, 0.0, 0.0, 0.0]])
        m = sample_masks(p, torch.Generator().manual_seed(0))
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert m[0, 0] == 0 and m[0, 1] == 1 and m[1, 0] == 1 and bool((m[1, 1:] == 0).all())

    def test_straight_through_gradient_is_identity(self) -> None:
        imp, valid = padded()
        p = keep_probabilities(imp, valid, torch.full((5,), 0.5, dtype=torch.float64), 1.0).detach().requires_grad_(True)
        w = torch.randn(p.shape, dtype=torch.float64)
        (sample_masks(p, torch.Generator().manual_seed(0)) * w).sum().backward()
        assert p.grad is not None
        torch.testing.assert_close(p.grad, w, rtol=0, atol=0)

    def test_dropped_only_gradient_passes_the_dropped_channels_alone(self) -> None:
        p = torch.full((3, 64), 0.5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(p.shape, dtype=torch.float64)
        m = sample_masks(p, torch.Generator().manual_seed(0), gradient="dropped_only")
        assert torch.equal(m, sample_masks(p.detach(), torch.Generator().manual_seed(0)))  # the same draw
        (m * w).sum().backward()
        assert p.grad is not None and 0 < int((m == 0).sum()) < m.numel()
        torch.testing.assert_close(p.grad, w * (1 - m), rtol=0, atol=0)

    def test_dropped_reweighted_gradient_divides_by_the_drop_probability(self) -> None:
        p = torch.rand(3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        w = torch.randn(p.shape, dtype=torch.float64)
        m = sample_masks(p, torch.Generator().manual_seed(0), gradient="dropped_reweighted")
        assert torch.equal(m, sample_masks(p.detach(), torch.Generator().manual_seed(0)))  # the same draw
        (m * w).sum().backward()
        assert p.grad is not None and 0 < int((m == 0).sum()) < m.numel()
        torch.testing.assert_close(p.grad, w * (1 - m) / (1 - p.detach()))

    def test_dropped_reweighted_is_unbiased_for_the_slope_at_zero_where_dropped_only_shrinks_it(self) -> None:
        # L(m) = Σ a·m + q·m² has slope a at m = 0 and a + 2q at m = 1, where straight-through looks.
        a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
        q = torch.tensor([-4.0, 1.0, 2.0, -1.0], dtype=torch.float64)
        p0 = torch.tensor([0.3, 0.6, 0.9, 0.97], dtype=torch.float64)
        mean = {}
        for kind in ("dropped_reweighted", "dropped_only"):
            p = p0.expand(20000, 4).clone().requires_grad_(True)
            m = sample_masks(p, torch.Generator().manual_seed(3), gradient=kind)
            (a * m + q * m * m).sum().backward()
            assert p.grad is not None
            mean[kind] = p.grad.mean(0)
        torch.testing.assert_close(mean["dropped_reweighted"], a, rtol=0, atol=0.25)
        torch.testing.assert_close(mean["dropped_only"], (1 - p0) * a, rtol=0, atol=0.05)

    def test_dropped_reweighted_is_finite_where_a_channel_is_certain(self) -> None:
        p = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
        (sample_masks(p, torch.Generator().manual_seed(0), gradient="dropped_reweighted") * 2.0).sum().backward()
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        assert p.grad[0] == 0 and p.grad[1] == 2.0

    def test_unknown_mask_gradient_lists_the_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="straight_through, dropped_only, dropped_reweighted"):
            sample_masks(torch.full((2,), 0.5), gradient="reinforce")

    def test_gradient_reaches_the_keep_ratios_through_the_masks(self) -> None:
        imp, valid = padded()
        a = torch.full((5,), 0.5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(imp.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
        (sample_masks(keep_probabilities(imp, valid, a, 1.0)) * w).sum().backward()
        jac = closed_form_gradient(imp, valid, a.detach(), 1.0, floor=0.01)
        assert a.grad is not None
        torch.testing.assert_close(a.grad, (jac * w * valid).sum(1), rtol=1e-10, atol=1e-12)

    def test_same_seed_same_masks_different_seed_different_masks(self) -> None:
        p = torch.full((4, 256), 0.5)
        first = sample_masks(p, torch.Generator().manual_seed(123))
        again = sample_masks(p, torch.Generator().manual_seed(123))
        other = sample_masks(p, torch.Generator().manual_seed(124))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)

    def test_draw_frequency_matches_probability(self) -> None:
        p = torch.tensor([0.05, 0.5, 0.9]).expand(20000, 3)
        m = sample_masks(p, torch.Generator().manual_seed(7))
        torch.testing.assert_close(m.mean(0), torch.tensor([0.05, 0.5, 0.9]), rtol=0, atol=0.015)

    def test_rejects_integer_probabilities(self) -> None:
        with pytest.raises(ConfigError, match="floating-point"):
            sample_masks(torch.ones(3, dtype=torch.long))


class TestInputChecks:
    def test_wrong_number_of_ratios(self) -> None:
        imp, valid = padded()
        with pytest.raises(KeepRatioError, match=r"one keep ratio per channel group \(5\)"):
            keep_probabilities(imp, valid, torch.full((4,), 0.5, dtype=torch.float64), 1.0)

    @pytest.mark.parametrize("beta2", [0.0, -1.0, math.inf, math.nan])
    def test_bad_beta2(self, beta2: float) -> None:
        imp, valid = padded()
        with pytest.raises(ConfigError, match="beta2"):
            keep_probabilities(imp, valid, torch.full((5,), 0.5, dtype=torch.float64), beta2)

    @pytest.mark.parametrize("floor", [-0.1, 1.0])
    def test_bad_floor(self, floor: float) -> None:
        imp, valid = padded()
        with pytest.raises(ConfigError, match=r"floor .* must lie in \[0, 1\)"):
            keep_probabilities(imp, valid, torch.full((5,), 0.5, dtype=torch.float64), 1.0, floor=floor)

    def test_valid_must_be_a_bool_mask_of_the_same_shape(self) -> None:
        imp, valid = padded()
        with pytest.raises(ConfigError, match="valid must be a bool mask"):
            keep_probabilities(imp, valid.double(), torch.full((5,), 0.5, dtype=torch.float64), 1.0)

    def test_importance_must_be_a_matrix(self) -> None:
        with pytest.raises(ConfigError, match=r"\[groups, max_channels\]"):
            solve_threshold(torch.ones(4), torch.ones(4, dtype=torch.bool), torch.ones(1), 1.0)


class TestAggregation:
    def test_modes(self) -> None:
        a, b = torch.tensor([1.0, 3.0]), torch.tensor([10.0, 30.0])
        assert aggregate_importance([a, b], "first").tolist() == [1.0, 3.0]
        assert aggregate_importance([a, b], "mean").tolist() == [5.5, 16.5]
        assert aggregate_importance([a, b], "sum_normalized").tolist() == [1.0, 3.0]  # 0.5 + 0.5, 1.5 + 1.5
        assert aggregate_importance([a], "sum_normalized").tolist() == [0.5, 1.5]

    def test_result_is_detached(self) -> None:
        gamma = torch.tensor([1.0, 2.0], requires_grad=True)
        for mode in IMPORTANCE_AGGREGATIONS.names():
            assert not aggregate_importance([gamma.abs(), gamma.abs()], mode).requires_grad

    def test_registry_lists_the_modes(self) -> None:
        assert IMPORTANCE_AGGREGATIONS.names() == ["first", "mean", "sum_normalized"]

    def test_unknown_mode_lists_the_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="valid names: first, mean, sum_normalized"):
            aggregate_importance([torch.ones(2)], "max")

    def test_members_must_agree_in_size(self) -> None:
        with pytest.raises(ConfigError, match=r"member 1 has shape \(3,\)"):
            aggregate_importance([torch.ones(2), torch.ones(3)], "mean")

    def test_needs_a_member(self) -> None:
        with pytest.raises(ConfigError, match="at least one member"):
            aggregate_importance([], "first")


class TestBeta2Schedule:
    def test_values(self) -> None:
        assert Beta2Schedule().value(0.7) == 1.0
        assert Beta2Schedule(start=2.0, kind="constant").value(1.0) == 2.0
        lin = Beta2Schedule(start=1.0, end=5.0, kind="linear")
        assert [lin.value(x) for x in (0.0, 0.25, 1.0)] == [1.0, 2.0, 5.0]
        exp = Beta2Schedule(start=1.0, end=100.0, kind="exponential")
        assert math.isclose(exp.value(0.5), 10.0) and math.isclose(exp.value(1.0), 100.0) and exp.final == 100.0

    def test_round_trips_through_a_dict(self) -> None:
        sched = Beta2Schedule(start=1.0, end=5.0, kind="linear")
        assert Beta2Schedule(**dataclasses.asdict(sched)) == sched

    def test_is_frozen(self) -> None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            Beta2Schedule().start = 2.0  # type: ignore[misc]

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"kind": "cosine"}, "valid kinds: constant, linear, exponential"),
            ({"start": 0.0}, "start must be a positive"),
            ({"start": 1.0, "end": -2.0, "kind": "linear"}, "end must be a positive"),
            ({"start": 1.0, "end": 5.0}, "constant beta2 schedule has one value"),
        ],
    )
    def test_rejects_bad_settings(self, kwargs: dict[str, object], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            Beta2Schedule(**kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize("progress", [-0.5, 1.5, math.nan])
    def test_rejects_progress_outside_the_unit_interval(self, progress: float) -> None:
        with pytest.raises(ConfigError, match=r"progress must lie in \[0, 1\]"):
            Beta2Schedule(start=1.0, end=5.0, kind="linear").value(progress)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    def test_no_host_sync_and_same_result_as_cpu(self) -> None:
        imp, valid = padded(dtype=torch.float32)
        ratios = torch.tensor([0.3, 0.2, 0.5, 0.62, 0.93])
        cpu = keep_probabilities(imp, valid, ratios, 5.0)
        imp_c, valid_c = imp.cuda(), valid.cuda()
        a = ratios.cuda().requires_grad_(True)
        gen = torch.Generator(device="cuda").manual_seed(0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            p = keep_probabilities(imp_c, valid_c, a, 5.0)
            m = sample_masks(p, gen)
            (m * p).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.testing.assert_close(p.detach().cpu(), cpu, rtol=0, atol=1e-6)
        assert a.grad is not None and bool(torch.isfinite(a.grad).all())

    def test_generator_on_the_wrong_device_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="torch.Generator\\(device='cuda:0'\\)"):
            sample_masks(torch.full((3,), 0.5, device="cuda"), torch.Generator().manual_seed(0))
