"""bench.py --group generate: PyTorch's word_language_model generation loop, nn.GRU vs
gru_native.GRU in the same model, the whole loop and the GRU's share of it."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn

import gru_native
from harness import OURS, REFERENCE, Case, fmt_fine, measure, sync
from shapes import Shape

GEN_VOCAB, GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, GEN_TOKENS = 10000, 650, 650, 2, 50
GEN_SEED = 1111  # word_language_model's default --seed


class WordLM(nn.Module):
    """PyTorch's examples/word_language_model RNNModel, GRU flavour, as generate.py runs it
    (eval: its dropouts are identities, so the GRU is built with dropout 0): Embedding ->
    GRU -> Linear decoder -> log_softmax over the vocabulary."""

    def __init__(self, device: str, dtype: torch.dtype):
        super().__init__()
        self.encoder = nn.Embedding(GEN_VOCAB, GEN_EMSIZE, device=device, dtype=dtype)
        self.rnn = nn.GRU(GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, dropout=0.0, device=device,
                          dtype=dtype)
        self.decoder = nn.Linear(GEN_HIDDEN, GEN_VOCAB, device=device, dtype=dtype)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # RNNModel.init_weights
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)


def generation_loop(model: WordLM, tokens: int, device: str, rnn_times: List[float],
                    words: List[torch.Tensor]) -> Callable[[], None]:
    """generate.py's loop: from a seeded random word and a zero hidden state, `tokens` calls of
    one word each, the hidden state carried, the next word sampled by
    torch.multinomial(output.squeeze().div(1.0).exp(), 1) from a generator seeded at every call
    (so every call, and both models, draw the same random numbers). Appends the time spent in
    the model.rnn calls (perf_counter around each, synchronised) to rnn_times; leaves the last
    call's words in words."""
    dtype = model.decoder.weight.dtype

    def run():
        gen = torch.Generator(device=device).manual_seed(GEN_SEED)
        inp = torch.randint(GEN_VOCAB, (1, 1), generator=gen, device=device)
        hidden = torch.zeros(GEN_LAYERS, 1, GEN_HIDDEN, device=device, dtype=dtype)
        in_rnn = 0.0
        sampled = []
        with torch.no_grad():
            for _ in range(tokens):
                emb = model.encoder(inp)
                sync(device)
                start = time.perf_counter()
                output, hidden = model.rnn(emb, hidden)
                sync(device)
                in_rnn += time.perf_counter() - start
                output = torch.log_softmax(model.decoder(output).view(-1, GEN_VOCAB), dim=1)
                word_idx = torch.multinomial(output.squeeze().div(1.0).exp(), 1,
                                             generator=gen)[0]
                inp.fill_(word_idx)
                sampled.append(word_idx)
        rnn_times.append(in_rnn)
        words[:] = sampled
    return run


def generate(args, dtype: torch.dtype) -> dict:
    """The generation loop with nn.GRU and with gru_native.GRU (the same model otherwise, the
    same weights), whole loop and the GRU's share, interleaved."""
    tokens = args.tokens or (10 if args.quick else GEN_TOKENS)
    torch.manual_seed(0)
    ref_model = WordLM(args.device, dtype).eval()
    ours_model = copy.deepcopy(ref_model)
    ours_model.rnn = gru_native.GRU(GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, dropout=0.0,
                                    device=args.device, dtype=dtype)
    ours_model.rnn.load_state_dict(ref_model.rnn.state_dict())
    ours_model.eval()
    shape = Shape("generate", tokens, 1, GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, False)
    case = Case(shape, "inference", modules={REFERENCE: ref_model, OURS: ours_model})
    rnn_times: Dict[str, List[float]] = {REFERENCE: [], OURS: []}
    words: Dict[str, List[torch.Tensor]] = {REFERENCE: [], OURS: []}
    for name, model in ((REFERENCE, ref_model), (OURS, ours_model)):
        case.fns[name] = generation_loop(model, tokens, args.device, rnn_times[name],
                                         words[name])
    print(f"# generate: word_language_model generation, Embedding({GEN_VOCAB}, {GEN_EMSIZE}) "
          f"-> GRU({GEN_EMSIZE}, {GEN_HIDDEN}, {GEN_LAYERS} layers) -> Linear({GEN_HIDDEN}, "
          f"{GEN_VOCAB}) -> log_softmax -> multinomial; N=1, one token per call, hidden carried, "
          f"eval, {tokens} tokens per timed round")
    result = measure(case, args.device, args.budget, args.min_rounds, args.max_rounds)
    rounds = result[OURS]["rounds"]
    rnn = {}
    for name, times in rnn_times.items():
        timed = times[-rounds:]  # measure() runs 2 warm-up calls first
        rnn[name] = {"median_s": statistics.median(timed), "min_s": min(timed),
                     "rounds": len(timed)}
    loop_ratio = result[REFERENCE]["median_s"] / result[OURS]["median_s"]
    rnn_ratio = rnn[REFERENCE]["median_s"] / rnn[OURS]["median_s"]

    def cells(r):
        return (f"{REFERENCE} {fmt_fine(r[REFERENCE]['median_s'])} "
                f"({r[REFERENCE]['median_s'] / r[OURS]['median_s']:.2f}x) | "
                f"{OURS} {fmt_fine(r[OURS]['median_s'])}")
    share = {n: rnn[n]["median_s"] / result[n]["median_s"] for n in (REFERENCE, OURS)}
    print(f"{f'generate, whole loop ({tokens} tokens)':<36} | {cells(result)} | rounds {rounds}")
    print(f"{'generate, GRU share (rnn calls only)':<36} | {cells(rnn)} | of the loop: "
          f"{REFERENCE} {share[REFERENCE]:.0%}, {OURS} {share[OURS]:.0%}")
    per_token = {n: result[n]["median_s"] / tokens for n in (REFERENCE, OURS)}
    print(f"# per token: {REFERENCE} {fmt_fine(per_token[REFERENCE])}, "
          f"{OURS} {fmt_fine(per_token[OURS])}")
    same = len(words[REFERENCE]) == len(words[OURS]) and all(
        bool(a == b) for a, b in zip(words[REFERENCE], words[OURS]))
    if same:
        print(f"# same sampled words from both models: yes ({tokens})")
    else:
        first = next(i for i, (a, b) in enumerate(zip(words[REFERENCE], words[OURS]))
                     if bool(a != b))
        print(f"# same sampled words from both models: no, first difference at word {first} "
              "(rounding moved a sample across a boundary; timings still compare like work)")
    return {"tokens": tokens, "loop": result, "rnn": rnn,
            "loop_speedup_vs_nn_gru": loop_ratio, "rnn_speedup_vs_nn_gru": rnn_ratio,
            "rnn_share_of_loop": share, "same_words": same}
