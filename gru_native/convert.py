"""Swap torch.nn.GRU and gru_native.GRU inside a model, keeping everything else."""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.utils import parametrize

from .gru import GRU, GRUCell

__all__ = ["convert", "to_torch"]

_PAIRS = ((nn.GRU, GRU), (nn.GRUCell, GRUCell))


def _swap_class(module: nn.Module, cls: type) -> nn.Module:
    """A module of class `cls` that is `module` in every other respect: the same Parameter
    objects (so optimizers, weight tying and shared weights keep working), buffers, hooks,
    training mode, device and dtype. Both classes are nn.RNNBase with the same attributes."""
    new = cls.__new__(cls)
    state = {}
    for key, value in module.__dict__.items():
        # Containers are copied (the two modules must not share them); their contents are not.
        if isinstance(value, dict):
            value = type(value)(value)
        elif isinstance(value, list):
            value = list(value)
        state[key] = value
    state.pop("_flat_weight_refs", None)
    new.__dict__.update(state)
    if hasattr(new, "_init_flat_weights"):  # GRU (not GRUCell): rebuild the weight list
        new._init_flat_weights()
    return new


def _replace(model: nn.Module, mapping: dict) -> nn.Module:
    target = mapping.get(type(model))
    if target is not None:
        if parametrize.is_parametrized(model):
            warnings.warn(
                f"{type(model).__name__} with parametrizations is left unconverted", stacklevel=3)
            return model
        return _swap_class(model, target)
    for name, child in list(model._modules.items()):
        if child is None:
            continue
        new_child = _replace(child, mapping)
        if new_child is not child:
            model._modules[name] = new_child
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replaces every ``torch.nn.GRU`` (and ``torch.nn.GRUCell``) in ``model``, at any depth,
    by a ``gru_native.GRU`` (``GRUCell``) holding the very same parameters, buffers and hooks,
    on the same device and dtype, in the same training mode. The model is changed in place and
    returned (if ``model`` is itself an nn.GRU, the new module is returned). Subclasses of
    nn.GRU and parametrized GRUs are left as they are. Hooks registered before the conversion
    keep running; their handles no longer remove them from the new module.

        model = gru_native.convert(model)        # then train, evaluate, compile as before
    """
    return _replace(model, dict(_PAIRS))


def to_torch(model: nn.Module) -> nn.Module:
    """The inverse of `convert`: every ``gru_native.GRU`` (``GRUCell``) in ``model`` becomes a
    ``torch.nn.GRU`` (``GRUCell``) with the same parameters, buffers, hooks and mode."""
    return _replace(model, {ours: theirs for theirs, ours in _PAIRS})
