"""The seed notebook's four configurations, its exact assertions, on gru_native.GRU; parity with
torch.nn.GRU for each; and the main job (python -m gru_native)."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from gru_native import seed

from _util import assert_close


@pytest.fixture(scope="module")
def batch():
    vocab, sequence_tensor = seed.build_batch()
    return vocab, sequence_tensor


def test_vocabulary_and_padding_as_in_the_notebook(batch):
    vocab, sequence_tensor = batch
    assert vocab == ['', 'G', 'R', 'U', 'a', 'c', 'd', 'e', 'i', 'n', 'r', 't', 'u']
    assert sequence_tensor.t().tolist() == [
        [1, 4, 11, 7, 6, 0, 0, 0, 0],
        [2, 7, 5, 12, 10, 10, 7, 9, 11],
        [3, 9, 8, 11, 0, 0, 0, 0, 0],
    ]


def _models(vocab, n_layers, bidirectional):
    torch.manual_seed(0)
    model = seed.GRUModel(len(vocab), 5, 5, n_layers, bidirectional)
    twin = seed.GRUModel(len(vocab), 5, 5, n_layers, bidirectional, gru_cls=nn.GRU)
    twin.load_state_dict(model.state_dict())
    return model, twin


def test_single_layer_unidirectional(batch):
    vocab, sequence_tensor = batch
    model, _ = _models(vocab, 1, False)
    output, hidden = model(sequence_tensor)
    assert output.shape == (9, 3, 5) and hidden.shape == (1, 3, 5)
    assert (output[-1, :, :] == hidden[0]).all()


def test_single_layer_bidirectional(batch):
    vocab, sequence_tensor = batch
    hidden_dim = 5
    model, _ = _models(vocab, 1, True)
    output, hidden = model(sequence_tensor)
    assert output.shape == (9, 3, 10) and hidden.shape == (2, 3, 5)
    assert (output[-1, :, :hidden_dim] == hidden[0]).all()
    assert (output[0, :, hidden_dim:] == hidden[-1]).all()


def test_multi_layer_unidirectional(batch):
    vocab, sequence_tensor = batch
    model, _ = _models(vocab, 2, False)
    output, hidden = model(sequence_tensor)
    assert output.shape == (9, 3, 5) and hidden.shape == (2, 3, 5)
    assert (output[-1, :, :] == hidden[-1]).all()


def test_multi_layer_bidirectional(batch):
    vocab, sequence_tensor = batch
    n_layers, hidden_dim = 2, 5
    model, _ = _models(vocab, n_layers, True)
    output, hidden = model(sequence_tensor)
    assert output.shape == (9, 3, 10) and hidden.shape == (4, 3, 5)
    batch_size = sequence_tensor.shape[1]
    hidden = hidden.view(n_layers, 2, batch_size, hidden_dim)
    assert hidden.shape == (2, 2, 3, 5)
    assert (output[-1, :, :hidden_dim] == hidden[-1][0]).all()
    assert (output[0, :, hidden_dim:] == hidden[-1][1]).all()


@pytest.mark.parametrize("n_layers, bidirectional", seed.CONFIGS,
                         ids=["1L-uni", "1L-bi", "2L-uni", "2L-bi"])
def test_parity_with_nn_gru(batch, n_layers, bidirectional):
    vocab, sequence_tensor = batch
    model, twin = _models(vocab, n_layers, bidirectional)
    results = []
    for m in (model, twin):
        output, hidden = m(sequence_tensor)
        (output.sin().sum() + hidden.cos().sum()).backward()
        results.append([output, hidden] + [p.grad for p in m.parameters()])
    names = ["output", "hidden"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, *results):
        assert_close(a, b, name)


def test_main_job_runs_and_passes():
    proc = subprocess.run([sys.executable, "-m", "gru_native", "--repeats", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("[ok]") == 4
    assert "all checks passed" in proc.stdout
    assert "speed" in proc.stdout
