"""The zoo's NIC image captioning model (Show and Tell) against a plain-torch module written here:
the same encoder, nn.Embedding, nn.LSTM and nn.Linear, decoding greedily in a Python loop. The
module loads the graph's weights by name (the LSTM's from ONNX's layout, gates reordered), and
its logits, step by step, must be the float64 interpreter's: the words the graph feeds back are
the ones torch chooses."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.errors import GraphoptError

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Encoder(nn.Module):
    def __init__(self, embed_size, channels=(32, 64, 128, 256)):
        super().__init__()
        for i, (cin, cout) in enumerate(zip((3, *channels), channels), start=1):
            setattr(self, f"block{i}", Block(cin, cout))
        self.depth = len(channels)
        self.embed = nn.Linear(channels[-1], embed_size)

    def forward(self, x):
        for i in range(1, self.depth + 1):
            x = getattr(self, f"block{i}")(x)
            if i < self.depth:
                x = F.max_pool2d(x, 2)
        return self.embed(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Decoder(nn.Module):
    def __init__(self, vocab_size, embed_size, hidden_size):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size)
        self.fc = nn.Linear(hidden_size, vocab_size)


class ShowAndTell(nn.Module):
    """Vinyals et al. 2015 at inference: the image embedding is the LSTM's input at t = -1, then
    the start word, then each step's argmax word."""

    def __init__(self, vocab_size=1000, embed_size=128, hidden_size=256, max_length=8,
                 start_word=0):
        super().__init__()
        self.encoder = Encoder(embed_size)
        self.decoder = Decoder(vocab_size, embed_size, hidden_size)
        self.max_length, self.start_word = max_length, start_word

    def forward(self, images):
        d = self.decoder
        _, state = d.lstm(self.encoder(images).unsqueeze(0))
        words = torch.full((images.shape[0],), self.start_word, dtype=torch.long)
        logits = []
        for _ in range(self.max_length):
            y, state = d.lstm(d.embedding(words).unsqueeze(0), state)
            logits.append(d.fc(y[0]))
            words = logits[-1].argmax(1)
        return torch.stack(logits, 1)


def torch_gates(onnx_weight: np.ndarray) -> torch.Tensor:
    """ONNX's gate blocks (i, o, f, c) of one direction in torch's order (i, f, g, o)."""
    i, o, f, c = np.split(onnx_weight, 4, axis=0)
    return torch.from_numpy(np.concatenate([i, f, c, o]).astype(np.float64))


def load_graph_weights(module: ShowAndTell, graph: go.Graph) -> ShowAndTell:
    """The graph's constants as the module's float64 state, strictly."""
    c = {k: v.data for k, v in graph.constants.items()}
    lstm = {k: c.pop(f"decoder.lstm.{k}") for k in ("W", "R", "B")}
    hidden4 = lstm["R"].shape[1]
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in c.items()}
    state.update({"decoder.lstm.weight_ih_l0": torch_gates(lstm["W"][0]),
                  "decoder.lstm.weight_hh_l0": torch_gates(lstm["R"][0]),
                  "decoder.lstm.bias_ih_l0": torch_gates(lstm["B"][0, :hidden4]),
                  "decoder.lstm.bias_hh_l0": torch_gates(lstm["B"][0, hidden4:])})
    missing, unexpected = module.double().load_state_dict(state, strict=False)
    assert unexpected == []
    assert [k for k in missing if not k.endswith("num_batches_tracked")] == []
    return module.eval()


SMALL = dict(vocab_size=50, embed_size=16, hidden_size=24, max_length=5, start_word=3)


def test_matches_torch_show_and_tell_with_the_same_weights():
    g = go.zoo.nic_captioning(batch=3, image_size=32, **SMALL)
    x = np.random.default_rng(1).uniform(0, 1, g.inputs[0].shape).astype(np.float32)
    expected = go.interpret(g, {"input": x}, dtype=np.float64)["output"]
    assert expected.shape == (3, SMALL["max_length"], SMALL["vocab_size"])
    with torch.no_grad():
        found = load_graph_weights(ShowAndTell(**SMALL), g)(
            torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(found, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    words = expected.argmax(-1)
    assert len(np.unique(words)) > 1, "the decoded words should vary"
    y32 = go.interpret(g, {"input": x})["output"]
    np.testing.assert_array_equal(y32.argmax(-1), words)
    np.testing.assert_allclose(y32, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_parameters_match_the_torch_module():
    with torch.device("meta"):
        count = sum(p.numel() for p in ShowAndTell().parameters())
    assert go.zoo.nic_captioning().num_params() == count == 1_202_056


def test_steps_share_one_set_of_decoder_weights():
    g = go.zoo.nic_captioning(**SMALL)
    lstm_nodes = [n for n in g.nodes if n.op_name == "lstm"]
    assert len(lstm_nodes) == SMALL["max_length"] + 1     # the image, then one per word
    assert len({tuple(v.name for v in n.inputs[1:4]) for n in lstm_nodes}) == 1
    assert [n.inputs[1].name for n in lstm_nodes[:1]] == ["decoder.lstm.W"]
    assert sum(n.op_name == "argmax" for n in g.nodes) == SMALL["max_length"] - 1
    assert {n.inputs[1].name for n in g.nodes if n.op_name == "linear" and
            n.name.startswith("decoder.")} == {"decoder.fc.weight"}


def test_a_start_word_outside_the_vocabulary_is_refused():
    with pytest.raises(GraphoptError, match=r"start_word in \[0, 50\), found 50"):
        go.zoo.nic_captioning(start_word=SMALL["vocab_size"], **{
            k: v for k, v in SMALL.items() if k != "start_word"})
