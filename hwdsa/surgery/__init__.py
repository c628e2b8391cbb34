"""Physical pruning: a `PruningPlan` (the kept channels of every group) and the surgery that applies it.

The flow (design note, section 6): the search ends with channel counts or masks → `plan_from_channels`,
`plan_from_keep_ratios` or `plan_from_masks` turn them into a `PruningPlan` (model-independent, JSON) →
`prune_` slices every convolution, BatchNorm and linear layer of the model to the kept channels, so the
smaller dense network computes exactly what the masked network computed → `save_pruned` stores the
weights with the plan and a SHA-256 digest of the weights, and `load_pruned` checks the file's integrity,
rebuilds the architecture from the model registry, applies the plan's shapes and loads the weights, with
no pickled code (`torch.load(weights_only=True)`).
"""

from hwdsa.channels import Rounding, round_channels
from hwdsa.surgery.cut import prune, prune_
from hwdsa.surgery.files import load_pruned, save_pruned
from hwdsa.surgery.plan import PruningPlan, plan_from_channels, plan_from_keep_ratios, plan_from_masks

__all__ = [
    "PruningPlan",
    "Rounding",
    "load_pruned",
    "plan_from_channels",
    "plan_from_keep_ratios",
    "plan_from_masks",
    "prune",
    "prune_",
    "round_channels",
    "save_pruned",
]
