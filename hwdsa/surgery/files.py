"""The pruned-model file: weights, the plan that shapes them and a digest, with no pickled code.

`save_pruned` writes it atomically; `load_pruned` checks its integrity (zip checksums, the weights'
SHA-256, finite values), rebuilds the architecture from the model registry, applies the plan's shapes
and loads the weights with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hwdsa._io import atomic_path
from hwdsa.errors import CheckpointError, ConfigError, HwdsaError
from hwdsa.surgery.cut import prune_
from hwdsa.surgery.plan import PruningPlan

_log = logging.getLogger("hwdsa.surgery")

__all__ = ["load_pruned", "save_pruned"]

_FILE_KIND = "hwdsa.pruned_model"
# 2: the payload records "weights_sha256", a digest of the state dict, that `load_pruned` verifies.
_FILE_VERSION = 2
# Older versions still read, with a warning: their weights carry no digest to verify.
_UNDIGESTED_VERSIONS = (1,)
_JSON_SCALARS = (str, int, float, bool, type(None))


def _check_extra(value: Any, where: str) -> None:
    if isinstance(value, _JSON_SCALARS) or isinstance(value, Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_extra(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings; got {k!r}")
            _check_extra(v, f"{where}[{k!r}]")
        return
    raise ConfigError(
        f"{where} is a {type(value).__name__}; save_pruned stores only numbers, strings, lists, dicts and tensors "
        "so the file loads with torch.load(weights_only=True) (serialise it to a JSON string first)"
    )


def _weights_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in sorted name order.

    torch.load never checks a file's zip checksums, so without this a flipped bit in a weight loads as a
    silently different network. Names, dtypes and shapes are hashed too: an entry renamed, retyped or
    reshaped no longer matches.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\n")
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _first_non_finite(state: Mapping[str, Tensor]) -> tuple[str, int] | None:
    """The first floating-point tensor (state-dict order) holding NaN or inf, with its count of such values."""
    for name, t in state.items():
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return name, bad
    return None


def save_pruned(
    path: str | os.PathLike[str],
    model: nn.Module,
    plan: PruningPlan,
    *,
    extra: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write the pruned weights and the plan that shapes them to `path` atomically (a `torch.save` file).

    The file holds only tensors and plain data ({"state_dict", "weights_sha256", "plan" (JSON),
    "model_name", "num_classes", "model_kwargs", "extra"}), never pickled classes: `load_pruned` rebuilds
    the architecture from the model registry. "weights_sha256" is a digest of the state dict (every
    tensor's name, dtype, shape and bytes) that `load_pruned` verifies, so corrupted weights are refused
    instead of loading as a different network. `model_name`, `num_classes` and `model_kwargs` default to
    the plan's; given, they are recorded in the saved plan too (`load_pruned` returns it).

    Args:
        path: destination file (conventionally `*.pt`).
        model: the pruned network (`prune(model, graph, plan)`).
        plan: the plan it was pruned with.
        extra: anything else to keep beside it (numbers, strings, lists, dicts, tensors), e.g. a report.

    Raises:
        ConfigError: `extra` holds something that would need pickled code, or the model is wrapped in DDP.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ConfigError("save the module inside the DistributedDataParallel/DataParallel wrapper (model.module)")
    extra_dict = dict(extra or {})
    _check_extra(extra_dict, "extra")
    # The arguments complete the plan's record, so the plan in the file and the file's fields agree.
    plan = replace(
        plan,
        model_name=model_name if model_name is not None else plan.model_name,
        num_classes=num_classes if num_classes is not None else plan.num_classes,
        model_kwargs=model_kwargs if model_kwargs is not None else plan.model_kwargs,
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    non_finite = _first_non_finite(state)
    if non_finite is not None:  # saved anyway (the run's only result), but load_pruned will refuse it
        _log.warning(
            "saving %s with %d non-finite values in %r: the weights have diverged and load_pruned will refuse the file",
            path, non_finite[1], non_finite[0],
        )  # fmt: skip
    payload = {
        "format": _FILE_KIND,
        "format_version": _FILE_VERSION,
        "state_dict": state,
        "weights_sha256": _weights_digest(state),
        "plan": plan.to_json(),
        "model_name": plan.model_name,
        "num_classes": plan.num_classes,
        "model_kwargs": json.dumps(dict(plan.model_kwargs)),
        "extra": extra_dict,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    _log.info("saved pruned %s to %s", type(model).__name__, path)
    return Path(path)


_REDO = "re-export it with hwdsa.surgery.save_pruned from the pruned model, or re-run the job that wrote it (hwdsa prune)"


def _read_payload(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of `p`, then the zip's CRC-32s, which torch itself never checks."""
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip, unpickler and storage errors all mean "not a readable file"
        raise CheckpointError(
            f"cannot read the pruned model {p}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
            "The file is truncated, corrupted, or was not written by hwdsa.surgery.save_pruned"
        ) from exc
    if zipfile.is_zipfile(p):  # the CRCs also cover the pickle (plan, extra), which the weights' digest does not
        try:
            with zipfile.ZipFile(p) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(f"{p} is corrupted: its zip checksums cannot be checked ({type(exc).__name__}: {exc}); {_REDO}") from exc
        if bad is not None:
            member = bad.split("/", 1)[-1]  # without the archive's root folder, a temporary name
            raise CheckpointError(f"{p} is corrupted: the zip checksum of its member {member} does not match its bytes; {_REDO}")
    if not isinstance(payload, dict) or payload.get("format") != _FILE_KIND:
        raise CheckpointError(f"{p} is not a pruned model written by hwdsa.surgery.save_pruned (no {_FILE_KIND!r} marker)")
    return payload


def _checked_state(p: Path, payload: Mapping[str, Any]) -> dict[str, Tensor]:
    """The saved state dict, verified against its digest (version 2 on) and refused if not finite."""
    version = payload.get("format_version")
    if version != _FILE_VERSION and version not in _UNDIGESTED_VERSIONS:
        raise CheckpointError(
            f"{p} has format version {version!r}; this hwdsa reads version {_FILE_VERSION} (and version "
            f"{', '.join(map(str, _UNDIGESTED_VERSIONS))} without a digest); a newer hwdsa may have written it"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"{p} holds no state_dict of named tensors; the file is corrupted; {_REDO}")
    if version == _FILE_VERSION:
        expected = payload.get("weights_sha256")
        if not isinstance(expected, str):
            raise CheckpointError(f"{p} is corrupted: it lacks the digest of its weights (weights_sha256); {_REDO}")
        if _weights_digest(state) != expected:
            raise CheckpointError(
                f"{p} is corrupted: its weights do not match the SHA-256 digest save_pruned recorded (a damaged "
                f"copy, a disk error, or an edit made outside save_pruned); {_REDO}"
            )
    else:
        _log.warning(
            "%s has format version %s, written before save_pruned recorded a digest of the weights: their integrity "
            "cannot be checked. Save it again with save_pruned to upgrade it", p, version,
        )  # fmt: skip
    non_finite = _first_non_finite(state)
    if non_finite is not None:
        name, count = non_finite
        raise CheckpointError(
            f"{p} holds non-finite weights: {name!r} has {count} NaN or inf values (the training diverged, or the "
            f"file is corrupted); {_REDO}, from weights that stay finite"
        )
    return state


def _one_line(exc: BaseException, limit: int = 600) -> str:
    """The exception's message on one line (the CLI prints errors as one line), cut at `limit` characters."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def _plan_misfit(p: Path, what: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{p}: the saved plan does not fit the {what} architecture: {_one_line(exc)}")


def _runs_on(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One plain forward pass on zeros: fx's shape propagation would print a raw traceback on a misfit."""
    was_training = model.training
    param = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=param.device if param is not None else "cpu"))
    finally:
        model.train(was_training)


def load_pruned(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, PruningPlan]:
    """Rebuild a pruned network written by `save_pruned`: architecture, plan's shapes, then weights.

    The file's integrity is checked first: the zip's CRC-32s, then the SHA-256 digest of the weights that
    `save_pruned` records (format version 2); the weights must also be finite. A version 1 file, written
    before the digest existed, still loads, with a logged warning that its weights' integrity cannot be
    checked (the zip checksums and the finiteness check still apply): refusing it would strand pruned models
    that took hours to make, and saving it again upgrades it. Newer versions are refused.

    The dense architecture comes from `model` when given (it is pruned in place and returned), else from
    the model registry by the saved name. It is traced at the plan's input shape, pruned with the plan,
    and the weights are loaded with `torch.load(weights_only=True)` and a strict `load_state_dict`. The
    `extra` dict saved beside it is `torch.load(path, weights_only=True)["extra"]`.

    Raises:
        CheckpointError: the file is missing, corrupted (checksums, digest, non-finite weights), not written
            by `save_pruned`, saved without a model name (pass `model=`), or its weights or plan do not fit
            the architecture, whatever field of the plan is at fault.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no pruned model at {p}")
    payload = _read_payload(p, map_location)
    state = _checked_state(p, payload)
    try:
        plan = PruningPlan.from_json(payload["plan"])
        kwargs = json.loads(payload.get("model_kwargs") or "{}")
        if not isinstance(kwargs, dict):
            raise ConfigError(f"model_kwargs must be a JSON object; got {type(kwargs).__name__}")
    except (HwdsaError, KeyError, ValueError, TypeError) as exc:  # KeepRatioError too: a group keeping nothing
        raise CheckpointError(
            f"{p} holds a malformed pruning plan: {exc}. The saved plan does not fit any architecture; {_REDO}"
        ) from exc
    name = payload.get("model_name")
    num_classes = payload.get("num_classes")
    # save_pruned writes these fields from the plan; a disagreement means an edit or damage after saving.
    for field_name, recorded, in_plan in (
        ("model_name", name, plan.model_name),
        ("num_classes", num_classes, plan.num_classes),
        ("model_kwargs", kwargs, dict(plan.model_kwargs)),
    ):
        if recorded != in_plan:
            raise CheckpointError(
                f"{p}: the saved plan does not fit the file's own record of the architecture: the plan has "
                f"{field_name}={in_plan!r}, the file {recorded!r}; {_REDO}"
            )
    what = f"{name!r}" if model is None else type(model).__name__

    from hwdsa.graph.tracer import trace_channel_graph  # heavy (fx); only loading needs it

    if model is None:
        if name is None:
            raise CheckpointError(
                f"{p} was saved without a model name, so its architecture cannot be rebuilt from the registry; "
                "pass the dense network as load_pruned(path, model=...)"
            )
        from hwdsa.models import create_model

        build_kwargs = dict(kwargs)
        if num_classes is not None:
            build_kwargs["num_classes"] = num_classes
        try:
            model = create_model(name, **build_kwargs)
        except (HwdsaError, TypeError, ValueError, RuntimeError) as exc:
            raise _plan_misfit(p, what, exc) from exc
        what = type(model).__name__
    input_shape = plan.input_shape
    if input_shape is None:
        if name is None:
            raise CheckpointError(f"{p}: the plan records no input shape to trace the architecture with")
        from hwdsa.models import default_input_shape

        try:
            input_shape = default_input_shape(name)
        except (HwdsaError, KeyError, TypeError) as exc:
            raise _plan_misfit(p, what, exc) from exc
    # A batch dimension keeps the shape unambiguous: (C, D, H, W) of a 3-D network would read as (N, C, H, W).
    shape = (2, *input_shape) if len(input_shape) >= 3 else tuple(input_shape)
    try:
        _runs_on(model, shape)
    except Exception as exc:  # a plan's input shape or model_kwargs (in_channels, ...) the network cannot run
        raise CheckpointError(
            f"{p}: the saved plan does not fit the {what} architecture: it does not run on the plan's input shape "
            f"{shape}: {type(exc).__name__}: {_one_line(exc, 300)}"
        ) from exc
    try:
        graph = trace_channel_graph(model, shape)
        prune_(model, graph, plan)
    except HwdsaError as exc:  # ConfigError, TracingError (NoPrunableLayerError), ...
        raise _plan_misfit(p, what, exc) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{p}: the saved weights do not fit the pruned {type(model).__name__}: {_one_line(exc)}"
        ) from exc
    return model, plan
