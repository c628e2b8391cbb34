"""The run-time guard of surgery: the pruned network must compute what the masked dense network computed.

The search optimises the dense network with the dropped channels masked to zero; surgery then removes
those channels. Both are the same function only if every operation between a mask site and the next
layer maps a zero channel to zero (the tracer's rule). `check_pruned_matches_masked` runs both networks
on one batch in eval mode and compares every traced layer's output at the kept channels, so that a
violation stops the job before fine-tuning, naming the first layer that differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hwdsa.errors import SurgeryMismatchError
from hwdsa.graph.structure import ChannelGraph
from hwdsa.masking import ChannelMasks
from hwdsa.surgery import PruningPlan

__all__ = ["check_pruned_matches_masked"]


@contextmanager
def _recorded(model: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    """Record the output of each named submodule (after any earlier hook, e.g. a mask, has run)."""
    outputs: dict[str, Tensor] = {}
    handles = []
    for name in names:
        def hook(module: nn.Module, inputs: object, output: object, name: str = name) -> None:
            if isinstance(output, Tensor):
                outputs[name] = output.detach()

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _mismatch(reference: Tensor, candidate: Tensor, rtol: float) -> float | None:
    """The largest absolute difference when it exceeds `rtol` of the reference's scale, else None."""
    if reference.shape != candidate.shape:
        return float("inf")
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    diff = float((reference - candidate).abs().max()) if reference.numel() else 0.0
    return diff if diff > rtol * max(scale, 1e-6) + 1e-6 else None


@torch.no_grad()
def check_pruned_matches_masked(
    dense: nn.Module, graph: ChannelGraph, plan: PruningPlan, pruned: nn.Module, inputs: Tensor, *, rtol: float = 1e-3
) -> float:
    """Raise `SurgeryMismatchError` unless `pruned` computes what `dense` masked by `plan` computes.

    Both networks run on `inputs` in eval mode (their modes are restored). Each traced layer's output is
    compared in execution order at the kept channels; the first one that differs by more than `rtol` of
    its scale is named in the error. Returns the largest relative difference of the final outputs.
    """
    modes = (dense.training, pruned.training)
    dense.eval()
    pruned.eval()
    names = [layer.name for layer in graph.layers]
    kept = [torch.as_tensor(k, dtype=torch.long) for k in plan.kept]
    try:
        with ChannelMasks(dense, graph) as masks, _recorded(dense, names) as ref_layers:
            masks.set_masks(plan.to_masks(device=inputs.device))
            reference = dense(inputs)
        with _recorded(pruned, names) as got_layers:
            output = pruned(inputs)
    finally:
        dense.train(modes[0])
        pruned.train(modes[1])
    for layer in graph.layers:
        ref, got = ref_layers.get(layer.name), got_layers.get(layer.name)
        if ref is None or got is None:
            continue
        if layer.out_group is not None:
            ref = ref.index_select(1, kept[layer.out_group].to(ref.device))
        diff = _mismatch(ref, got, rtol)
        if diff is not None:
            raise SurgeryMismatchError(
                f"the pruned network differs from the masked dense network first at layer {layer.name!r} "
                f"(max |difference| {diff:.3g} on outputs up to {float(ref.abs().max()):.3g}): a channel the plan "
                "drops still reaches this layer in the masked network. This is a bug in hwdsa's tracer or surgery "
                "for this model; please report it with the model's definition"
            )
    diff = _mismatch(reference, output, rtol)
    if diff is not None:
        raise SurgeryMismatchError(
            f"the pruned network's output differs from the masked dense network's (max |difference| {diff:.3g}) although "
            "every traced layer matches: an untraced operation after the last layer depends on dropped channels"
        )
    scale = float(reference.abs().max()) if reference.numel() else 1.0
    return float((reference - output).abs().max()) / max(scale, 1e-12)
