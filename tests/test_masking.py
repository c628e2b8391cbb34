"""ChannelMasks: hooks that zero masked channels at every mask site, with gradients, under fx and DDP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.fx
from torch import Tensor, nn

from hwdsa.dsa.process import keep_probabilities, sample_masks
from hwdsa.errors import KeepRatioError, TracingError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.graph.tracer import trace_channel_graph
from hwdsa.masking import ChannelMasks, has_mask_hooks


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Net(nn.Module):
    """Two conv groups (the second shared by a residual add), a hidden linear with BatchNorm1d, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6, 5)
        self.bnf = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(h)))
        y = torch.relu(self.bn3(self.conv3(y)) + y)
        z = torch.relu(self.bnf(self.fc1(y.mean(dim=(2, 3)))))
        return self.fc2(z)


def _net(seed: int = 0) -> tuple[nn.Module, ChannelGraph]:
    torch.manual_seed(seed)
    model = _Net()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.5)
                mod.running_mean.normal_(0.0, 0.5)
    model.eval()
    return model, trace_channel_graph(model, (3, 6, 6))


def _capture(module: nn.Module, store: dict[str, Tensor], key: str, *, before_masks: bool) -> None:
    """Record the module's output as the masks' hook receives it (prepend) or as it leaves the hooks."""
    module.register_forward_hook(lambda m, i, o: store.__setitem__(key, o.detach().clone()), prepend=before_masks)


def test_graph_of_the_test_network() -> None:
    _, graph = _net()
    assert [g.mask_sites for g in graph.groups] == [("bn1",), ("bn2", "bn3"), ("bnf",)]


def test_masks_zero_channels_at_every_site_and_scale_the_rest() -> None:
    model, graph = _net()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        dense = model(x)
    seen: dict[str, Tensor] = {}
    unmasked: dict[str, Tensor] = {}
    masks = ChannelMasks(model, graph)
    for name in ("bn1", "bn2", "bn3", "bnf"):
        _capture(model.get_submodule(name), seen, name, before_masks=False)
        _capture(model.get_submodule(name), unmasked, name, before_masks=True)
    m = [torch.tensor([1, 0, 1, 0.5, 1, 1, 0, 1]), torch.tensor([0, 1, 1, 1, 0, 1.0]), torch.tensor([1, 1, 0, 1, 1.0])]
    masks.set_masks(m)
    with torch.no_grad():
        masked = model(x)
    assert not torch.allclose(masked, dense)
    for name, mask in (("bn1", m[0]), ("bn2", m[1]), ("bn3", m[1]), ("bnf", m[2])):
        shape = (1, -1, 1, 1) if seen[name].dim() == 4 else (1, -1)
        torch.testing.assert_close(seen[name], unmasked[name] * mask.view(shape))
    assert float(seen["bn1"][:, 1].abs().max()) == 0.0  # exactly zero, despite the BatchNorm's shift
    masks.clear()
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense, rtol=0, atol=0)
    masks.remove()


def test_remove_restores_the_model_and_context_manager_removes_on_error() -> None:
    model, graph = _net()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        dense = model(x)
    with pytest.raises(ValueError, match="boom"):
        with ChannelMasks(model, graph) as masks:
            masks.set_masks([torch.zeros(c) for c in graph.group_sizes])
            assert has_mask_hooks(model) and masks.is_installed
            raise ValueError("boom")
    assert not has_mask_hooks(model) and not masks.is_installed
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense, rtol=0, atol=0)
    masks.remove()  # idempotent
    with pytest.raises(RuntimeError, match="these ChannelMasks were removed; create new ones"):
        masks.set_masks([torch.ones(c) for c in graph.group_sizes])


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ([torch.ones(8), torch.ones(6)], r"expected one mask per channel group \(3\), got 2"),
        ([torch.ones(8), torch.ones(5), torch.ones(5)], r"group 1: expected a mask of shape \(6,\), got \(5,\)"),
        ([torch.ones(8), torch.ones(1, 6), torch.ones(5)], r"group 1: expected a mask of shape \(6,\), got \(1, 6\)"),
        ([torch.ones(8), [1.0] * 6, torch.ones(5)], "group 1: a mask must be a tensor, got list"),
    ],
)
def test_set_masks_validates(masks: list[Tensor], match: str) -> None:
    model, graph = _net()
    with ChannelMasks(model, graph) as cm:
        with pytest.raises(KeepRatioError, match=match):
            cm.set_masks(masks)
        assert cm.masks is None  # a rejected call leaves the previous state


def test_masks_follow_the_model_dtype_and_accept_bool() -> None:
    model, graph = _net()
    model.double()
    with ChannelMasks(model, graph) as cm:
        cm.set_masks([torch.ones(c, dtype=torch.bool) for c in graph.group_sizes])
        assert cm.masks is not None and all(m.dtype == torch.float64 for m in cm.masks)
        assert model(torch.randn(2, 3, 6, 6, dtype=torch.float64)).dtype == torch.float64


def test_gradient_reaches_the_masks_exactly() -> None:
    model, graph = _net()
    model.double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    others = [torch.rand(c, dtype=torch.float64) for c in graph.group_sizes]

    with ChannelMasks(model, graph) as cm:

        def f(m1: Tensor) -> Tensor:
            cm.set_masks([others[0], m1, others[2]])
            return model(x)

        mask = torch.rand(6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(f, (mask,), eps=1e-6, atol=1e-6)


def test_straight_through_masks_pass_gradient_to_keep_ratios() -> None:
    model, graph = _net()
    importance = torch.stack([torch.cat([torch.rand(c), torch.zeros(8 - c)]) for c in graph.group_sizes])
    valid = torch.stack([torch.arange(8) < c for c in graph.group_sizes])
    alpha = torch.tensor([0.6, 0.5, 0.8], requires_grad=True)
    p = keep_probabilities(importance, valid, alpha, beta2=1.0)
    m = sample_masks(p, generator=torch.Generator().manual_seed(0))
    with ChannelMasks(model, graph) as cm:
        cm.set_masks([m[g, :c] for g, c in enumerate(graph.group_sizes)])
        model(torch.randn(2, 3, 6, 6)).square().sum().backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad).all() and bool((alpha.grad != 0).all())


def test_masks_work_in_an_fx_graph_module() -> None:
    model, graph = _net()
    x = torch.randn(2, 3, 6, 6)
    m = [torch.rand(c) for c in graph.group_sizes]
    with ChannelMasks(model, graph) as cm, torch.no_grad():
        cm.set_masks(m)
        expected = model(x)
        traced_after = torch.fx.symbolic_trace(model)  # shares the hooked submodules
        torch.testing.assert_close(traced_after(x), expected)
    gm = torch.fx.symbolic_trace(model)
    with ChannelMasks(gm, graph) as cm, torch.no_grad():
        cm.set_masks(m)
        torch.testing.assert_close(gm(x), expected)


def test_masks_work_inside_distributed_data_parallel(tmp_path: Path) -> None:
    model, graph = _net()
    model.train()
    x = torch.randn(4, 3, 6, 6)
    m = [torch.rand(c) for c in graph.group_sizes]
    reference = _net()[0].train()
    with ChannelMasks(reference, graph) as cm:
        cm.set_masks(m)
        expected = reference(x)
        expected.sum().backward()
    created = not dist.is_initialized()  # another test of the session may hold a process group already
    if created:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        mask1 = m[1].clone().requires_grad_(True)
        with ChannelMasks(ddp, graph) as cm:  # hooks go on the inner module
            assert cm.model is model
            cm.set_masks([m[0], mask1, m[2]])
            out = ddp(x)
            out.sum().backward()
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(model.conv2.weight.grad, reference.conv2.weight.grad)
        assert mask1.grad is not None and bool((mask1.grad != 0).any())
    finally:
        if created:
            dist.destroy_process_group()


def test_errors_for_models_that_do_not_match_the_graph() -> None:
    _, graph = _net()
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(TracingError, match=r"the model has no submodule 'bn1' \(a mask site of group 0\)"):
        ChannelMasks(other, graph)
    model, graph = _net()
    with ChannelMasks(model, graph) as cm:
        cm.set_masks([torch.ones(c) for c in graph.group_sizes])
        # A site whose output no longer has its group's channels (as after pruning under installed masks).
        model.bn1.register_forward_hook(lambda mod, i, o: o[:, :4], prepend=True)
        with pytest.raises(TracingError, match=r"mask site 'bn1' \(group 0\) produced \(2, 4, 6, 6\), expected a tensor with 8"):
            model(torch.randn(2, 3, 6, 6))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_move_to_the_model_device_and_follow_autocast() -> None:
    model, graph = _net()
    model.cuda()
    x = torch.randn(2, 3, 6, 6, device="cuda")
    m = [torch.rand(c) for c in graph.group_sizes]  # on the CPU: moved to the model's device
    with ChannelMasks(model, graph) as cm:
        cm.set_masks(m)
        assert cm.masks is not None and all(t.device.type == "cuda" for t in cm.masks)
        with torch.no_grad():
            full = model(x)
            with torch.autocast("cuda", dtype=torch.float16):
                half = model(x)
    torch.testing.assert_close(half.float(), full, rtol=2e-2, atol=2e-2)


# -- placement: before the activation (the authors') or where the layers read the channels --------------


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_cifar"])
def test_both_placements_compute_the_same_forward_for_binary_masks(name: str) -> None:
    from hwdsa.models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.bias.data.uniform_(-1, 1)
    graph = trace_channel_graph(model, (3, 32, 32))
    gen = torch.Generator().manual_seed(1)
    masks = [(torch.rand(c, generator=gen) < 0.5).float() for c in graph.group_sizes]
    x = torch.randn(2, 3, 32, 32)
    outputs = []
    for placement in ("before_activation", "after_activation"):
        with ChannelMasks(model, graph, placement=placement) as m, torch.no_grad():  # type: ignore[arg-type]
            m.set_masks(masks)
            outputs.append(model(x))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)


def test_after_activation_gives_dropped_channels_a_slope_where_relu_kills_it_before() -> None:
    """A block-internal ResNet group (conv → BN → ReLU → conv): ReLU'(0) = 0 hides the dropped channels."""
    from hwdsa.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20").train()
    graph = trace_channel_graph(model, (3, 32, 32))
    inner = next(g for g in graph.groups if g.producers == ("layer1.0.conv1",))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    dropped = torch.arange(inner.channels) % 2 == 0
    slopes = {}
    for placement in ("before_activation", "after_activation"):
        masks = [torch.ones(c, requires_grad=True) for c in graph.group_sizes]
        with torch.no_grad():
            masks[inner.index][dropped] = 0.0
        with ChannelMasks(model, graph, placement=placement) as m:  # type: ignore[arg-type]
            m.set_masks(masks)
            nn.functional.cross_entropy(model(x), y).backward()
        grad = masks[inner.index].grad
        assert grad is not None
        slopes[placement] = grad[dropped].abs()
    assert float(slopes["before_activation"].max()) == 0.0
    assert bool((slopes["after_activation"] > 0).all())


def test_unknown_placement_is_refused() -> None:
    model, graph = _net()
    with pytest.raises(Exception, match="unknown mask placement 'inside'"):
        ChannelMasks(model, graph, placement="inside")  # type: ignore[arg-type]
