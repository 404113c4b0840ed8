"""The functional entry points, ``gru`` and ``gru_cell``: what ``torch._VF.gru`` and
``torch._VF.gru_cell`` are to nn.GRU and nn.GRUCell.

``gru`` plays the part of ``torch._VF.gru``: the argument checks torch's parser makes, the
autocast cast nn.GRU makes, the dropout masks drawn from torch's generator exactly as ATen draws
them, then the route (gru_native/_route.py) to the fused ops or to torch's own.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _C, _registration, _route
from ._route import DIRECT, TORCH

__all__ = ["gru", "gru_cell", "build_info", "empty_cache"]

_forward_op = torch.ops.gru_native.gru_forward.default


def empty_cache() -> int:
    """Releases the host memory gru_native keeps for reuse between calls (the large internal
    buffers of the CPU ops: workspace, scratch) that no tensor is using; returns the bytes
    released. Like torch.cuda.empty_cache(), only needed to hand memory back to the system."""
    return int(_C._empty_cache())


def build_info() -> dict:
    """How the extension was built: torch version (built against / running), whether the CUDA
    kernels were compiled (and for which architectures), compiler flags, CPU vector ISA, and
    the backend serving each device type (``backends``, e.g. ``{"cpu": "CPU"}``; on the CUDA
    emulation ``{"cpu": "CUDA"}``)."""
    info = dict(_C.build_info())
    info["backends"] = {t: entry[0] for t, entry in _route.BACKENDS.items()}
    info["torch_version"] = torch.__version__
    info["version"] = __import__("gru_native._version", fromlist=["__version__"]).__version__
    return info


def _dropout_mask(
    p: float, num_layers: int, rows: int, width: int, like: Tensor
) -> Optional[Tensor]:
    """The keep-masks nn.GRU applies to each lower layer's output in training, drawn exactly as
    ATen draws them (at::dropout on CPU: ``empty_like(x).bernoulli_(1 - p).div_(1 - p)``, one
    draw per layer in layer order; p == 1 multiplies by zero without drawing; nothing is drawn
    for an empty tensor), so a seeded run reproduces nn.GRU's masks on the CPU."""
    if rows * width <= 0:
        return None
    mask = torch.empty((num_layers - 1, rows, width), dtype=like.dtype, device=like.device)
    if p == 1:
        return mask.zero_()
    for layer in range(num_layers - 1):
        mask[layer].bernoulli_(1 - p)
    return mask.div_(1 - p)


_noted_fallback = set()
_log = logging.getLogger("gru_native")


def _note_fallback(device: torch.device, dtype: torch.dtype) -> None:
    # A log record, not a warning: nn.GRU warns about nothing here, and a drop-in replacement
    # must not make a warnings-as-errors test suite fail where nn.GRU passes.
    if (device.type, dtype) not in _noted_fallback and not _route.has_kernel(device.type, dtype):
        _noted_fallback.add((device.type, dtype))
        _log.info(
            "gru_native has no %s kernels for %s in this build; using torch's own GRU "
            "implementation there (the same math, at torch's speed)", device.type, dtype)


def _cast_for_autocast(dtype, input, hx, weights):
    def cast(t):
        return t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t
    return cast(input), cast(hx), [cast(w) for w in weights]


def _torch_gru(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
               batch_first, batch_sizes, hidden_size=None):
    """torch's own implementation (what nn.GRU calls), same arguments as `gru`."""
    if batch_sizes is None:
        if hx is None:
            hx = _zeros_hidden(input, weights, num_layers, bidirectional, batch_first,
                               hidden_size)
        return torch._VF.gru(input, hx, weights, has_biases, num_layers, dropout, train,
                             bidirectional, batch_first)
    return torch._VF.gru(input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                         train, bidirectional)


def _zeros_hidden(input, weights, num_layers, bidirectional, batch_first, hidden_size=None):
    """nn.GRU's default h0 for dense input (nn.GRU sizes it with its hidden_size, which the
    weights match unless they were re-assigned with other shapes)."""
    return torch.zeros(num_layers * (2 if bidirectional else 1),
                       input.size(0 if batch_first else 1),
                       weights[1].size(1) if hidden_size is None else hidden_size,
                       dtype=input.dtype, device=input.device)


def gru(
    input: Tensor,
    hx: Optional[Tensor],
    weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool = False,
    batch_sizes: Optional[Tensor] = None,
    *,
    hidden_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Multi-layer GRU over a whole sequence, the arguments of ``torch._VF.gru``.

    Dense: ``input`` is [T, N, C] ([N, T, C] if ``batch_first``) and the output [T, N, D*H]
    (a transposed view if ``batch_first``, as ATen returns). Packed: ``input`` is the
    PackedSequence's data [R, C] and ``batch_sizes`` its batch sizes; the output is [R, D*H].
    ``hx`` is [L*D, N, H] (None: zeros, dense input only); returns ``(output, h_n)``.
    ``hidden_size`` (the module's) sizes those zeros where torch's implementation is used;
    by default it is read from the weights.
    """
    if hx is None and batch_sizes is not None:
        D = 2 if bidirectional else 1
        hx = torch.zeros(num_layers * D, int(batch_sizes[0]), weights[1].size(1),
                         dtype=input.dtype, device=input.device)
    if not (type(has_biases) is bool and type(train) is bool and type(bidirectional) is bool
            and type(batch_first) is bool):
        # nn.GRU passes these to torch._VF.gru, whose argument parser rejects anything but a
        # bool (e.g. GRU(..., bidirectional=1)); let it raise its own TypeError.
        if hx is None:
            hx = _zeros_hidden(input, weights, num_layers, bidirectional, batch_first,
                               hidden_size)
        if batch_sizes is None:
            torch._VF.gru(input, hx, weights, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first)
        else:
            torch._VF.gru(input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                          train, bidirectional)
        raise TypeError("gru_native: has_biases, train, bidirectional and batch_first must be "
                        "bools")
    device_type = input.device.type
    cast_to = _route.autocast_dtype(device_type)
    if cast_to is not None:
        input, hx, weights = _cast_for_autocast(cast_to, input, hx, weights)
    way = _route.route((input, hx, *weights), device_type, input.dtype)
    if way is TORCH:
        _note_fallback(input.device, input.dtype)
        return _torch_gru(input, hx, weights, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first, batch_sizes, hidden_size)

    caller_input = input
    if batch_sizes is None and batch_first:
        input = input.transpose(0, 1)
    # The empty-sequence and h0-dtype checks of ATen are made by the kernels (same messages).
    mask = None
    if dropout != 0 and train and num_layers > 1:
        rows = input.size(0) * (input.size(1) if batch_sizes is None else 1)
        width = (2 if bidirectional else 1) * weights[1].size(1)
        mask = _dropout_mask(float(dropout), num_layers, rows, width, input)
    if way is DIRECT:
        result = _C.gru(input, hx, weights, batch_sizes, mask, has_biases, num_layers,
                        bidirectional)
        if result is None:  # weights the fused kernels do not take: nn.GRU's result or error
            return _torch_gru(caller_input, hx, weights, has_biases, num_layers, dropout, train,
                              bidirectional, batch_first, batch_sizes, hidden_size)
        output, hy = result
    else:
        # Through the dispatcher, mixed devices would pick one device's kernel (a meta input
        # would even get the fake kernel): check first, as ATen's check_attributes does.
        _registration.check_attributes(input, hx, weights)
        need_workspace = torch.is_grad_enabled() and (
            input.requires_grad
            or (hx is not None and hx.requires_grad)
            or any(w.requires_grad for w in weights)
        )
        output, hy, _, _ = _forward_op(input, hx, weights, batch_sizes, mask, has_biases,
                                       num_layers, bidirectional, need_workspace)
    if batch_sizes is None and batch_first:
        output = output.transpose(0, 1)
    return output, hy


def gru_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> Tensor:
    """One GRU step, the arguments of ``torch._VF.gru_cell``: input [N, C], hx [N, H] ->
    h' [N, H]. A one-step, one-layer run of the fused ops (one forward op, one backward op).
    Anything the fused path does not take as it is (inconsistent shapes, dtypes or devices, a
    dtype without a kernel) goes to torch's own cell, which raises nn.GRUCell's errors or
    computes nn.GRUCell's result."""
    device_type = input.device.type
    cast_to = _route.autocast_dtype(device_type)
    if cast_to is not None:
        # nn.GRUCell under CUDA autocast: gru_cell's autocast kernel runs it in that dtype.
        input, hx, (w_ih, w_hh, b_ih, b_hh) = _cast_for_autocast(
            cast_to, input, hx, [w_ih, w_hh, b_ih, b_hh])
    way = _route.route((input, hx, w_ih, w_hh, b_ih, b_hh), device_type, input.dtype)
    if way is DIRECT:
        result = _C.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
        if result is not None:
            return result
        # Arguments the fused step does not take: nn.GRUCell's error or result.
        return torch._VF.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    has_biases = b_ih is not None
    H = hx.size(1) if hx.dim() == 2 else -1
    ok = way is not TORCH and (
        input.dim() == 2 and hx.dim() == 2 and (b_hh is not None) == has_biases
        and input.size(1) == w_ih.size(1) and input.size(0) == hx.size(0)
        and w_hh.size(1) == H and w_ih.dim() == 2 and w_hh.dim() == 2
        and w_ih.size(0) == 3 * H and w_hh.size(0) == 3 * H
        and (not has_biases or (b_ih.shape == (3 * H,) and b_hh.shape == (3 * H,)))
    )
    weights = [w_ih, w_hh] + ([b_ih, b_hh] if has_biases else [])
    if ok:
        ok = all(t.dtype == input.dtype and t.device == input.device for t in [hx] + weights)
    if not ok:
        return torch._VF.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    _, hy = gru(input.unsqueeze(0), hx.unsqueeze(0), weights, has_biases, 1, 0.0, False, False)
    return hy[0]
