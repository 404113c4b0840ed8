"""What the ops need from Python: their fake (meta) kernels, for torch.compile, torch.export,
meta tensors and opcheck; and the backward under ``create_graph=True``, which the C++ autograd
node (csrc/autograd.cpp) calls back with its saved tensors (layout: ``Saved``).

The C++ extension declares two ops (csrc/gru_native.cpp) and registers each backend's kernels
and the one Autograd kernel there:

- ``gru_native::gru_forward``: every layer and direction of the stack in one call. Returns the
  output, h_n, and what backward needs (the per-step gates and the lower layers' outputs).
- ``gru_native::gru_backward``: the whole backward pass in one call.
- ``gru_native::quantized_gru``: the quantized modules' forward (gru_native/quantized.py; CPU,
  inference only: its autograd formula raises).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

from . import _C, _route

__all__ = ["Saved", "check_attributes"]


class Saved(NamedTuple):
    """The C++ node's saved tensors, in its order (csrc/autograd.h, namespace ``saved``)."""
    input: Tensor
    hx: Optional[Tensor]
    output: Tensor
    workspace: Tensor
    layer_outputs: Tensor
    batch_sizes: Optional[Tensor]
    dropout_mask: Optional[Tensor]
    weights: List[Tensor]

    @classmethod
    def of(cls, saved: tuple) -> "Saved":
        n = len(cls._fields) - 1
        return cls(*saved[:n], weights=list(saved[n:]))


if tuple(Saved._fields) != tuple(_C.saved_fields()):
    raise ImportError(f"gru_native: the extension saves {_C.saved_fields()}, the package reads "
                      f"{Saved._fields}: rebuild the extension")


def check_attributes(input: Tensor, hx: Optional[Tensor], weights) -> None:
    """ATen's check_attributes (RNN.cpp), same messages: one device for all."""
    device = input.device
    for name, tensors in (("hidden", () if hx is None else (hx,)), ("parameter", weights)):
        for t in tensors:
            if t.device != device:
                raise RuntimeError(
                    f"Input and {name} tensors are not at the same device, found input tensor "
                    f"at {device} and {name} tensor at {t.device}"
                )


# ----------------------------------------------------------------------------------------------
# Fake kernels: output metadata from input metadata (torch.compile, meta tensors, opcheck).


@torch.library.register_fake("gru_native::gru_forward")
def _gru_forward_fake(
    input, hx, weights, batch_sizes, dropout_mask, has_biases, num_layers, bidirectional,
    need_workspace,
):
    # The kernels' first checks (nn.GRU's), so that meta and fake tensors fail as real ones do.
    check_attributes(input, hx, weights)
    if batch_sizes is None and input.dim() == 3:
        torch._check(input.size(0) != 0,
                     lambda: "Expected sequence length to be larger than 0 in RNN")
    if hx is not None and hx.dtype != weights[1].dtype:
        raise RuntimeError(
            f"gru_native: hx has dtype {hx.dtype} but the weights have {weights[1].dtype}")
    D = 2 if bidirectional else 1
    H = weights[1].size(1)
    if batch_sizes is None:
        torch._check(input.dim() == 3, lambda: "gru_native: dense input must be 3-D")
        T, N = input.size(0), input.size(1)
        R = T * N
        output = input.new_empty((T, N, D * H))
    else:
        torch._check(input.dim() == 2, lambda: "gru_native: packed input must be 2-D")
        torch._check(hx is not None, lambda: "gru_native: packed input needs hx")
        R = input.size(0)
        N = hx.size(1)
        output = input.new_empty((R, D * H))
    hy = input.new_empty((num_layers * D, N, H))
    if need_workspace:
        ws_dtype = _route.workspace_dtype(input.device.type, input.dtype)
        workspace = input.new_empty((num_layers, D, R, 4 * H), dtype=ws_dtype)
        layer_outputs = input.new_empty((num_layers - 1, R, D * H) if num_layers > 1 else (0,))
    else:
        workspace = input.new_empty((0,))
        layer_outputs = input.new_empty((0,))
    return output, hy, workspace, layer_outputs


@torch.library.register_fake("gru_native::gru_backward")
def _gru_backward_fake(
    grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, workspace,
    layer_outputs, has_biases, num_layers, bidirectional, need_input_grad, need_weight_grad,
    need_hx_grad=True,
):
    grad_input = input.new_empty(input.shape) if need_input_grad else input.new_empty((0,))
    D = 2 if bidirectional else 1
    N = input.size(1) if batch_sizes is None else hx.size(1)
    grad_hx = (input.new_empty((num_layers * D, N, weights[1].size(1))) if need_hx_grad
               else input.new_empty((0,)))
    grad_weights = [w.new_empty(w.shape) for w in weights] if need_weight_grad else []
    return grad_input, grad_hx, grad_weights


@torch.library.register_fake("gru_native::quantized_gru")
def _quantized_gru_fake(input, hx, weights, scales, batch_sizes, has_biases, num_layers,
                        bidirectional, panels=None):
    D = 2 if bidirectional else 1
    H = weights[1].size(1)
    if batch_sizes is None:
        torch._check(input.dim() == 3, lambda: "gru_native: dense input must be 3-D")
        T, N = input.size(0), input.size(1)
        output = input.new_empty((T, N, D * H))
    else:
        torch._check(hx is not None, lambda: "gru_native: packed input needs hx")
        N = hx.size(1)
        output = input.new_empty((input.size(0), D * H))
    return output, input.new_empty((num_layers * D, N, H))


def _quantized_gru_backward(ctx, grad_output, grad_hy):
    raise RuntimeError("gru_native: the quantized GRU has no gradient (inference only): train the "
                       "float32 gru_native.GRU it was made from and quantize it again")


torch.library.register_autograd("gru_native::quantized_gru", _quantized_gru_backward)


# ----------------------------------------------------------------------------------------------
# The backward under create_graph=True (double backward, gradient penalties).


def _differentiable_backward(saved, grad_output, grad_hy, has_biases, num_layers,
                             bidirectional):
    """The gradients as a graph: the fused backward op is not itself differentiable, so they
    are computed by autograd through the plain-PyTorch reference (gru_native._reference), which
    is differentiable to any order. Slow, and only used when a graph of the backward is asked
    for. Returns (grad_input, grad_hx, grad_weights), None where no gradient is needed."""
    from ._reference import gru_reference

    s = Saved.of(saved)
    input, hx, weights = s.input, s.hx, s.weights
    with torch.enable_grad():
        D = 2 if bidirectional else 1
        N = input.size(1) if s.batch_sizes is None else int(s.batch_sizes[0])
        h0 = hx if hx is not None else input.new_zeros(num_layers * D, N, weights[1].size(1))
        out, hy = gru_reference(input, h0, weights, has_biases, num_layers, bidirectional,
                                None if s.batch_sizes is None else s.batch_sizes.tolist(),
                                s.dropout_mask)
        pairs = [(t, g) for t, g in ((out, grad_output), (hy, grad_hy)) if g is not None]
        candidates = [input] + ([hx] if hx is not None else []) + list(weights)
        wanted = [t for t in candidates if t.requires_grad]
        grads = iter(torch.autograd.grad([p[0] for p in pairs], wanted, [p[1] for p in pairs],
                                         create_graph=True, allow_unused=True) if wanted and pairs
                     else [None] * len(wanted))
        result = [next(grads) if t.requires_grad else None for t in candidates]
    grad_input = result[0]
    grad_hx = result[1] if hx is not None else None
    grad_weights = result[2 if hx is not None else 1:]
    return grad_input, grad_hx, grad_weights


_C._set_differentiable_backward(_differentiable_backward)
