"""Recurrent layers (nn.LSTM, nn.GRU, nn.RNN) exported as tract scans over time."""
import pytest
import torch
from torch import nn

from helpers import assert_bundle_matches

import t2n
from t2n.errors import TranslationError

pytestmark = [  # torch's own notes while exporting recurrent layers
    pytest.mark.filterwarnings("ignore:The tensor attributes self.layer._flat_weights"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]


class Recurrent(nn.Module):
    """Calls the layer with the given initial states (none, h0, or h0 and c0) and returns
    plain tensors: output, then the final states."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, h=None, c=None):
        states = () if h is None else ((h, c),) if c is not None else (h,)
        out, last = self.layer(x, *states)
        return (out, *last) if isinstance(last, tuple) else (out, last)


def _layer(kind, size=5, hidden=6, **kw):
    torch.manual_seed(0)
    if kind == "rnn_relu":
        return nn.RNN(size, hidden, nonlinearity="relu", **kw)
    return {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[kind](size, hidden, **kw)


def _inputs(layer, batch, time, states, dtype=torch.float32):
    dirs = 2 if layer.bidirectional else 1
    x = torch.randn((batch, time, layer.input_size) if layer.batch_first
                    else (time, batch, layer.input_size), dtype=dtype)
    if not states:
        return (x,)
    proj = getattr(layer, "proj_size", 0)
    h = torch.randn(layer.num_layers * dirs, batch, proj or layer.hidden_size, dtype=dtype)
    if not isinstance(layer, nn.LSTM):
        return (x, h)
    return (x, h, torch.randn(layer.num_layers * dirs, batch, layer.hidden_size, dtype=dtype))


CONFIGS = {
    "1layer": {},
    "2layers": {"num_layers": 2},
    "bidir": {"bidirectional": True},
    "2layers_bidir_batch_first": {"num_layers": 2, "bidirectional": True, "batch_first": True},
    "no_bias": {"bias": False, "bidirectional": True},
}
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_with_states(kind, config, tmp_path):
    layer = _layer(kind, **CONFIGS[config])
    assert_bundle_matches(Recurrent(layer), _inputs(layer, 2, 5, states=True), tmp_path)


@pytest.mark.parametrize("config", ["1layer", "2layers_bidir_batch_first"], ids=str)
@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_without_states(kind, config, tmp_path):
    layer = _layer(kind, **CONFIGS[config])
    assert_bundle_matches(Recurrent(layer), _inputs(layer, 2, 5, states=False), tmp_path)


@pytest.mark.parametrize("states", [True, False], ids=["states", "no_states"])
def test_lstm_projection(states, tmp_path):
    layer = _layer("lstm", proj_size=3, num_layers=2, bidirectional=True)
    assert_bundle_matches(Recurrent(layer), _inputs(layer, 2, 4, states), tmp_path)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("kind", ["lstm", "gru"], ids=str)
def test_dynamic_time(kind, batch_first, tmp_path):
    layer = _layer(kind, num_layers=2, bidirectional=True, batch_first=batch_first)
    axis = 1 if batch_first else 0
    assert_bundle_matches(
        Recurrent(layer), _inputs(layer, 2, 5, states=True), tmp_path,
        dynamic_axes={"x": {axis: "T"}},
        other_args=[_inputs(layer, 2, 2, states=True), _inputs(layer, 2, 9, states=True)])


@pytest.mark.parametrize("kind", ["lstm", "gru"], ids=str)
def test_dynamic_time_and_batch_without_states(kind, tmp_path):
    layer = _layer(kind, bidirectional=True)
    assert_bundle_matches(Recurrent(layer), _inputs(layer, 2, 5, states=False), tmp_path,
                          dynamic_axes={"x": {0: "T", 1: "B"}},
                          other_args=[_inputs(layer, 3, 2, False), _inputs(layer, 4, 8, False)])


@pytest.mark.parametrize("kind", ["lstm", "gru"], ids=str)
def test_f16(kind, tmp_path):
    layer = _layer(kind, num_layers=2, bidirectional=True)
    assert_bundle_matches(Recurrent(layer), _inputs(layer, 2, 5, states=True), tmp_path,
                          dtype="f16", tolerance="approximate")


def test_unbatched_input(tmp_path):
    layer = _layer("gru", bidirectional=True)
    assert_bundle_matches(Recurrent(layer), (torch.randn(5, 5), torch.randn(2, 6)), tmp_path)


def test_training_dropout_is_refused(tmp_path):
    layer = _layer("lstm", num_layers=2, dropout=0.5)
    model = Recurrent(layer)
    program = torch.export.export(model.train(), _inputs(layer, 2, 3, True), strict=False)
    with pytest.raises(TranslationError, match="dropout"):
        t2n.translate.translate(program)
