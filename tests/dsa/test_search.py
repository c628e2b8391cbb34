"""The DSA search end to end on real data: budget met, infeasible budgets refused, resume, distributed ranks agree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hwdsa.costs import Budget, FlopsCost, ParamsCost
from hwdsa.data import load_dataset, make_loader
from hwdsa.dsa.allocator import AdmmConfig, RatioAllocator
from hwdsa.channels import channels_within_budgets
from hwdsa.dsa.search import DsaSearch, SearchConfig, rank_settled_first, settle_step
from hwdsa.errors import BudgetInfeasibleError
from hwdsa.graph import trace_channel_graph
from hwdsa.models import create_model
from hwdsa.training import TrainConfig


def _setup(seed: int = 0, rank: int | None = None, world_size: int | None = None):
    torch.manual_seed(seed)
    splits = load_dataset("digits", subset_per_class=40, seed=0)
    kw = {} if rank is None else {"rank": rank, "world_size": world_size}
    train = make_loader(splits.train, 64, train=True, seed=seed, **kw)
    holdout = make_loader(splits.holdout, 64, train=True, seed=seed, **kw)
    model = create_model("small_cnn", in_channels=1)
    graph = trace_channel_graph(model, splits.input_shape)
    return model, graph, train, holdout


def _config(epochs: int = 2, settle: float = 0.0, restart: bool = False) -> SearchConfig:
    admm = AdmmConfig(update_every=1, settle_fraction=settle, settle_restart=restart)
    return SearchConfig(train=TrainConfig(epochs=epochs, lr=0.05), admm=admm, seed=3)


def test_search_meets_the_budget_exactly() -> None:
    model, graph, train, holdout = _setup()
    budgets = [Budget.fraction_of_dense(FlopsCost(graph), 0.5), Budget.fraction_of_dense(ParamsCost(graph), 0.6)]
    result = DsaSearch(model, graph, budgets, _config(1), torch.device("cpu")).run(train, holdout)
    for b in budgets:
        assert b.cost.exact(result.channels) <= b.limit
        assert b.cost(torch.tensor(result.keep_ratios, dtype=torch.float64)) <= b.limit * (1 + 1e-6)
    assert result.weight_steps == len(train) and result.ratio_steps == len(train)
    assert result.costs["flops"] > 0.3 * FlopsCost(graph).dense, "the allocation uses the budget, not far below it"
    ratios = torch.tensor(result.keep_ratios, dtype=torch.float64)
    assert max(float(b.cost(ratios)) / b.limit for b in budgets) == pytest.approx(1.0, abs=1e-4), "one budget binds"


def test_infeasible_budget_is_refused_before_training() -> None:
    _, graph, _, _ = _setup()
    cost = FlopsCost(graph)
    with pytest.raises(BudgetInfeasibleError, match="smallest reachable"):
        RatioAllocator(graph.group_sizes, [Budget(cost, 1.0)], AdmmConfig())


def test_integer_channels_within_budget() -> None:
    _, graph, _, _ = _setup()
    cost = FlopsCost(graph)
    budget = Budget.fraction_of_dense(cost, 0.37)
    ratios = torch.full((len(graph.groups),), 0.62)  # deliberately over budget
    for multiple in (None, 8):
        ch = channels_within_budgets(ratios, [budget], graph.group_sizes, multiple=multiple)
        assert cost.exact(ch) <= budget.limit
        if multiple:
            assert all(c % multiple == 0 or c == size for c, size in zip(ch, graph.group_sizes))


@pytest.mark.parametrize(
    ("epochs", "settle", "restart"), [(2, 0.0, False), (3, 0.5, False), (3, 0.5, True)], ids=["searching", "settled", "settled-restarted"]
)
def test_killed_search_resumes_to_the_same_result(tmp_path: Path, epochs: int, settle: float, restart: bool) -> None:
    """Killed after the next-to-last epoch: still searching, or (settle 0.5 of three epochs) already training the
    settled network, at the learning rate restarted at the settle point or not."""

    def run(checkpoint: Path | None, kill_after: int | None = None, resume: bool = False):
        model, graph, train, holdout = _setup()
        budget = Budget.fraction_of_dense(FlopsCost(graph), 0.5)
        search = DsaSearch(model, graph, [budget], _config(epochs, settle, restart), torch.device("cpu"))

        def on_epoch(record: dict) -> None:
            if kill_after is not None and record["epoch"] == kill_after:
                raise KeyboardInterrupt

        result = search.run(train, holdout, checkpoint=checkpoint, resume=resume, on_epoch=on_epoch)
        return result, model

    straight, straight_model = run(None)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, kill_after=epochs - 1)
    assert ckpt.is_file()
    resumed, resumed_model = run(ckpt, resume=True)
    assert resumed.keep_ratios == straight.keep_ratios
    assert resumed.channels == straight.channels
    assert (straight.settled_kept is None) == (settle == 0)
    if straight.settled_kept is not None:
        assert resumed.settled_kept is not None
        assert all(torch.equal(a, b) for a, b in zip(resumed.settled_kept, straight.settled_kept))
    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model, graph, train, holdout = _setup(rank=rank, world_size=world_size)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        budget = Budget.fraction_of_dense(FlopsCost(graph), 0.5)
        search = DsaSearch(ddp, graph, [budget], _config(1), torch.device("cpu"))
        seen: list[torch.Tensor] = []
        original = search.masker.set_masks

        def record(masks):  # every mask every rank applies, in order
            seen.append(torch.cat([m.detach().flatten() for m in masks]))
            return original(masks)

        search.masker.set_masks = record  # type: ignore[method-assign]
        result = search.run(train, holdout)
        torch.save({"ratios": result.keep_ratios, "masks": torch.stack(seen), "logits": search.allocator.logits.detach()}, f"{out}/rank{rank}.pt")
        # gloo aborts a process (SIGABRT) that tears its group down while the other rank still talks to it
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_hold_identical_masks_and_ratios(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["ratios"] == r1["ratios"]
    torch.testing.assert_close(r0["logits"], r1["logits"], rtol=0, atol=0)
    torch.testing.assert_close(r0["masks"], r1["masks"], rtol=0, atol=0)
    assert r0["masks"].shape[0] > 2


def test_a_settled_search_stops_the_ratios_and_trains_the_network_it_keeps() -> None:
    """settle_fraction 0.5 of two epochs: ratio steps in the first epoch only; the second trains under one fixed set
    of 0/1 masks, the rounding's counts of the then-feasible ratios, which the plan keeps channel for channel."""
    model, graph, train, holdout = _setup()
    budget = Budget.fraction_of_dense(FlopsCost(graph), 0.5)
    counts_seen: list[list[int]] = []

    def rounding(ratios: torch.Tensor) -> list[int]:  # the caller's rounding, here onto multiples of 4
        counts_seen.append(channels_within_budgets(ratios, [budget], graph.group_sizes, multiple=4))
        return counts_seen[-1]

    search = DsaSearch(model, graph, [budget], _config(2, settle=0.5), torch.device("cpu"), rounding=rounding)
    masks_seen: list[tuple[int, list[torch.Tensor]]] = []
    original = search.masker.set_masks

    def record(masks):
        masks_seen.append((search.weight_steps, [m.detach().clone() for m in masks]))
        return original(masks)

    search.masker.set_masks = record  # type: ignore[method-assign]
    result = search.run(train, holdout)
    assert result.ratio_steps == len(train) and result.weight_steps == 2 * len(train)
    assert result.settled_kept is not None and len(counts_seen) == 1 and result.channels == counts_seen[0]
    assert all(c % 4 == 0 or c == size for c, size in zip(result.channels, graph.group_sizes)), "the caller's rounding"
    assert FlopsCost(graph).exact(result.channels) <= budget.limit
    settled = [(step, m) for step, m in masks_seen if step >= len(train)]
    assert len(settled) == 1, "one fixed set of masks for the whole settle phase"
    assert [int(m.sum()) for m in settled[0][1]] == result.channels
    assert all(torch.equal(m, k.float()) for m, k in zip(settled[0][1], result.settled_kept))
    assert any(0 < float(m.sum()) < m.numel() for _, ms in masks_seen[: -1] for m in ms), "random masks before it"
    plan = result.to_plan(model, graph)
    assert [list(k) for k in plan.kept] == [k.nonzero().flatten().tolist() for k in result.settled_kept]


def _learning_rates(search: DsaSearch) -> list[float]:
    """The learning rate of every weight step `search` takes."""
    seen: list[float] = []
    search.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"]))
    return seen


def test_a_restarted_settle_phase_trains_the_kept_network_at_the_full_rate() -> None:
    """settle_restart: the steps before the settle point keep the search's cosine; from it the cosine starts again
    at the full rate and decays to zero by the end."""
    runs = {}
    for restart in (False, True):
        model, graph, train, holdout = _setup()
        search = DsaSearch(model, graph, [Budget.fraction_of_dense(FlopsCost(graph), 0.5)], _config(2, 0.5, restart), torch.device("cpu"))
        runs[restart] = _learning_rates(search)
        search.run(train, holdout)
    plain, restarted = runs[False], runs[True]
    at = settle_step(len(plain), 0.5)
    assert at == len(train)
    assert restarted[:at] == plain[:at], "unchanged before the settle point"
    assert plain[at] < 0.55 * 0.05 and restarted[at] == pytest.approx(0.05), "the full rate at the settle point"
    assert all(a > b for a, b in zip(restarted[at:], restarted[at + 1 :])) and restarted[-1] < 0.1 * 0.05


def test_the_settle_step_is_the_first_step_at_its_progress() -> None:
    for total, fraction in [(1760, 0.2), (10, 0.3), (7, 0.5), (3, 0.9), (1000, 1e-4), (10, 0.01)]:
        step = settle_step(total, fraction)
        first = next((s for s in range(total) if s / total >= 1 - fraction), None)
        assert step == first, (total, fraction)
    assert settle_step(100, 0.0) is None


def test_the_settled_channels_rank_first_whatever_their_importance() -> None:
    importance = [torch.tensor([5.0, 0.1, 3.0, 0.2])]
    kept = [torch.tensor([False, True, False, True])]
    (ranked,) = rank_settled_first(importance, kept)
    assert ranked.argsort(descending=True).tolist() == [3, 1, 0, 2], "kept first, each part by importance"
    assert rank_settled_first(importance, None) == importance
    with pytest.raises(ValueError, match="2 settled masks for 1 groups"):
        rank_settled_first(importance, kept * 2)


def test_a_search_result_gives_the_plan_that_prunes_to_its_channels() -> None:
    from hwdsa.surgery import prune

    model, graph, train, holdout = _setup()
    budget = Budget.fraction_of_dense(FlopsCost(graph), 0.5)
    result = DsaSearch(model, graph, [budget], _config(1), torch.device("cpu")).run(train, holdout)
    plan = result.to_plan(model, graph, model_name="small_cnn")
    assert list(plan.channels) == result.channels and plan.model_name == "small_cnn"
    pruned = prune(model, graph, plan)
    assert FlopsCost(graph).exact(result.channels) <= budget.limit
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
