"""gru_native: a fused GRU for PyTorch, a drop-in replacement for torch.nn.GRU.

    import gru_native
    rnn = gru_native.GRU(input_size, hidden_size, num_layers, bidirectional=True)

Everything nn.GRU takes and returns, the same parameters and state_dict; one fused op forward and
one backward for the whole stack (C++ on the CPU, CUDA on NVIDIA GPUs).
"""

from ._version import __version__
from .convert import convert, to_torch
from .gru import GRU, GRUCell
from .ops import build_info, empty_cache, gru, gru_cell
from .quantized import QuantizedGRU, QuantizedGRUCell, quantization_error, quantize

__all__ = [
    "GRU", "GRUCell", "convert", "to_torch", "gru", "gru_cell", "build_info", "empty_cache",
    "quantize", "quantization_error", "QuantizedGRU", "QuantizedGRUCell", "__version__",
]
