"""A plain-PyTorch GRU: the oracle that tests and docs compare against.

Written from nn.GRU's documented equations, step by step, with nothing shared with the kernels:
any dtype (float64 for a precise reference), differentiable by autograd, dense or packed.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = ["gru_reference", "module_reference"]


def gru_reference(
    input: Tensor,
    hx: Tensor,
    weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    bidirectional: bool,
    batch_sizes: Optional[Sequence[int]] = None,
    dropout_masks: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Multi-layer GRU.

    input: [T, N, C] (time-major) or, with ``batch_sizes``, packed data [R, C].
    hx: [L*D, N, H]. weights: nn.GRU's ``_flat_weights`` order.
    dropout_masks: [L-1, R, D*H] multiplied into each lower layer's output, or None.
    Returns (output [T, N, D*H] or [R, D*H], h_n [L*D, N, H]).
    """
    D = 2 if bidirectional else 1
    per_dir = 4 if has_biases else 2
    dense = batch_sizes is None
    if dense:
        T, N = input.shape[0], input.shape[1]
        bs = [N] * T
        x = input.reshape(T * N, input.shape[-1])
    else:
        bs = [int(b) for b in batch_sizes]
        T = len(bs)
        x = input
    offsets = [sum(bs[:t]) for t in range(T)]
    h_n = []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            w = weights[(layer * D + d) * per_dir:(layer * D + d + 1) * per_dir]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            h = hx[layer * D + d]
            step_out = [None] * T
            # Rows of a step are the first bs[t] rows of the state: the forward direction leaves
            # finished sequences behind, the reverse one starts each at its own last step from
            # its own h0 row.
            for t in (range(T) if d == 0 else reversed(range(T))):
                b = bs[t]
                gi = x[offsets[t]:offsets[t] + b] @ w_ih.T
                gh = h[:b] @ w_hh.T
                if has_biases:
                    gi = gi + b_ih
                    gh = gh + b_hh
                i_r, i_z, i_n = gi.chunk(3, 1)
                h_r, h_z, h_nn = gh.chunk(3, 1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_nn)
                h_new = (1 - z) * n + z * h[:b]
                h = torch.cat([h_new, h[b:]], 0)
                step_out[t] = h_new
            outs.append(torch.cat(step_out, 0))
            h_n.append(h)
        x = torch.cat(outs, 1)
        if layer < num_layers - 1 and dropout_masks is not None:
            x = x * dropout_masks[layer]
    output = x.reshape(T, -1, x.shape[-1]) if dense else x
    return output, torch.stack(h_n, 0)


def module_reference(module, input, hx: Optional[Tensor] = None, dtype=None):
    """What ``module(input, hx)`` returns, for an nn.GRU-compatible module in eval mode (or with
    dropout=0), computed by `gru_reference` in ``dtype`` (default: the module's). Handles
    batch_first, unbatched and PackedSequence input like nn.GRU."""
    weights = [w if dtype is None else w.to(dtype) for w in module._flat_weights]
    cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    D = 2 if module.bidirectional else 1
    L, H = module.num_layers, module.hidden_size
    if isinstance(input, PackedSequence):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        N = int(batch_sizes[0])
        h0 = torch.zeros(L * D, N, H, dtype=data.dtype, device=data.device) if hx is None else (
            hx if sorted_indices is None else hx.index_select(1, sorted_indices))
        out, h_n = gru_reference(cast(data), cast(h0), weights, module.bias, L,
                                 module.bidirectional, batch_sizes=batch_sizes.tolist())
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), h_n
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(1)
    if batched and module.batch_first:
        x = x.transpose(0, 1)
    if hx is None:
        h0 = torch.zeros(L * D, x.shape[1], H, dtype=x.dtype, device=x.device)
    else:
        h0 = hx if batched else hx.unsqueeze(1)
    out, h_n = gru_reference(cast(x), cast(h0), weights, module.bias, L, module.bidirectional)
    if not batched:
        return out.squeeze(1), h_n.squeeze(1)
    if module.batch_first:
        out = out.transpose(0, 1)
    return out, h_n
