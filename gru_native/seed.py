"""The GRU notebook gru_native started from, on gru_native.GRU. The notebook itself is kept
outside this repository; this module carries its model, its batch and its assertions.

Builds the notebook's vocabulary and padded, time-major batch, runs its four configurations
(1/2 layers x uni/bidirectional) with the notebook's own assertions, compares each with
torch.nn.GRU carrying the same weights (output, h_n and gradients), and times both.
`python -m gru_native` runs it and exits non-zero if any check fails.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, List, Tuple

import torch
from torch import nn

from .gru import GRU

DATA = ["Gated", "Recurrent", "Unit"]  # batch_size = 3
HIDDEN_DIM = 5
EMBED_DIM = 5
CONFIGS = [(1, False), (1, True), (2, False), (2, True)]  # (n_layers, bidirectional)
TOLERANCE = 1e-5  # float32


class GRUModel(nn.Module):
    """The notebook's model: an embedding feeding a GRU (gru_native.GRU unless told otherwise)."""

    def __init__(self, input_dim, embedding_dim, hidden_dim, n_layers, bidirectional,
                 gru_cls=GRU):
        super().__init__()
        self.embedding = nn.Embedding(input_dim, embedding_dim)
        self.gru = gru_cls(embedding_dim, hidden_dim, num_layers=n_layers,
                           bidirectional=bidirectional)

    def forward(self, input):
        embed = self.embedding(input)
        output, hidden = self.gru(embed)
        return output, hidden


def build_batch() -> Tuple[List[str], torch.Tensor]:
    """The notebook's vocabulary and its padded batch, time-major: (max_len, batch_size)."""
    vocab = [""] + sorted(set(char for seq in DATA for char in seq))
    vocab2idx = [[vocab.index(token) for token in seq] for seq in DATA]
    seq_lengths = torch.LongTensor([len(seq) for seq in vocab2idx])
    sequence_tensor = torch.zeros(len(vocab2idx), int(seq_lengths.max()), dtype=torch.long)
    for idx, (seq, seq_len) in enumerate(zip(vocab2idx, seq_lengths)):
        sequence_tensor[idx, :seq_len] = torch.LongTensor(seq)
    return vocab, sequence_tensor.t()


def notebook_assertions(output, hidden, n_layers, bidirectional, batch_size) -> None:
    """The notebook's asserts for one configuration, verbatim in meaning."""
    if n_layers == 1 and not bidirectional:
        assert (output[-1, :, :] == hidden[0]).all()
    elif n_layers == 1 and bidirectional:
        assert (output[-1, :, :HIDDEN_DIM] == hidden[0]).all()
        assert (output[0, :, HIDDEN_DIM:] == hidden[-1]).all()
    elif not bidirectional:
        assert (output[-1, :, :] == hidden[-1]).all()
    else:
        hidden = hidden.view(n_layers, 2, batch_size, HIDDEN_DIM)
        assert (output[-1, :, :HIDDEN_DIM] == hidden[-1][0]).all()
        assert (output[0, :, HIDDEN_DIM:] == hidden[-1][1]).all()


def compare_with_nn_gru(model: GRUModel, sequence_tensor: torch.Tensor) -> float:
    """Largest difference to an nn.GRU twin with the same weights, over the output, h_n and every
    gradient, each relative to its tensor's scale: max|a - b| / max(1, max|b|)."""
    twin = GRUModel(model.embedding.num_embeddings, EMBED_DIM, HIDDEN_DIM, model.gru.num_layers,
                    model.gru.bidirectional, gru_cls=nn.GRU)
    twin.load_state_dict(model.state_dict())
    results = []
    for m in (model, twin):
        m.zero_grad()
        output, hidden = m(sequence_tensor)
        (output.sin().sum() + hidden.cos().sum()).backward()
        results.append([output, hidden] + [p.grad for p in m.parameters()])
    return max((a - b).abs().max().item() / max(1.0, b.abs().max().item())
               for a, b in zip(*results))


def time_pair(fns: List[Callable[[], None]], repeats: int) -> List[float]:
    """Median seconds of each callable, interleaved (one of each per round), after a warm-up."""
    for fn in fns:
        for _ in range(3):
            fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, samples):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def speed_line(sequence_tensor: torch.Tensor, vocab_size: int, repeats: int = 200) -> str:
    """One line: nn.GRU vs gru_native.GRU on the notebook's batch, 2 layers, bidirectional."""
    torch.manual_seed(0)
    ours = GRUModel(vocab_size, EMBED_DIM, HIDDEN_DIM, 2, True)
    ref = GRUModel(vocab_size, EMBED_DIM, HIDDEN_DIM, 2, True, gru_cls=nn.GRU)
    ref.load_state_dict(ours.state_dict())

    def infer(m):
        def run():
            with torch.no_grad():
                m(sequence_tensor)
        return run

    def train(m):
        def run():
            output, hidden = m(sequence_tensor)
            (output.sum() + hidden.sum()).backward()
        return run

    t_inf = time_pair([infer(ref), infer(ours)], repeats)
    t_train = time_pair([train(ref), train(ours)], repeats)
    return (f"speed (T=9, N=3, 2 layers, bidirectional; median of {repeats}, interleaved): "
            f"inference nn.GRU {t_inf[0] * 1e6:.0f} us, gru_native {t_inf[1] * 1e6:.0f} us "
            f"({t_inf[0] / t_inf[1]:.1f}x); training nn.GRU {t_train[0] * 1e6:.0f} us, "
            f"gru_native {t_train[1] * 1e6:.0f} us ({t_train[0] / t_train[1]:.1f}x)")


def main(repeats: int = 200) -> int:
    torch.manual_seed(0)
    vocab, sequence_tensor = build_batch()
    print("Vocabulary:", vocab)
    print("Padded batch, time-major (max_len, batch_size):")
    print(sequence_tensor)
    batch_size = sequence_tensor.shape[1]
    failures = 0
    for n_layers, bidirectional in CONFIGS:
        name = f"{n_layers} layer{'s' if n_layers > 1 else ''}, " \
               f"{'bidirectional' if bidirectional else 'unidirectional'}"
        model = GRUModel(len(vocab), EMBED_DIM, HIDDEN_DIM, n_layers, bidirectional)
        output, hidden = model(sequence_tensor)
        D = 2 if bidirectional else 1
        shapes_ok = (tuple(output.shape) == (sequence_tensor.shape[0], batch_size, D * HIDDEN_DIM)
                     and tuple(hidden.shape) == (n_layers * D, batch_size, HIDDEN_DIM))
        try:
            notebook_assertions(output, hidden, n_layers, bidirectional, batch_size)
            asserts_ok = True
        except AssertionError:
            asserts_ok = False
        diff = compare_with_nn_gru(model, sequence_tensor)
        ok = shapes_ok and asserts_ok and diff <= TOLERANCE
        failures += not ok
        print(f"[{'ok' if ok else 'FAIL'}] {name}: input {tuple(sequence_tensor.shape)}, "
              f"output {tuple(output.shape)}, hidden {tuple(hidden.shape)}; notebook asserts "
              f"{'hold' if asserts_ok else 'FAIL'}; max difference to nn.GRU (output, h_n, grads; "
              f"relative to each tensor's scale) "
              f"{diff:.2e} (tolerance {TOLERANCE:g})")
    print(speed_line(sequence_tensor, len(vocab), repeats))
    if failures:
        print(f"{failures} configuration(s) failed")
        return 1
    print("all checks passed")
    return 0
