"""NIC image captioning (Vinyals et al. 2015, "Show and Tell: A Neural Image Caption
Generator"): a CNN encodes the image into a word-embedding-sized vector, which an LSTM reads as
its first input (t = -1); then the LSTM reads the start word and, for a fixed number of steps,
greedy decoding feeds each step's most likely word (argmax of the vocabulary logits) back as the
next step's input, embedded from the word table. The decoding runs inside the graph: each step
is an `lstm` of sequence length 1 reading the previous step's states, all steps sharing one set
of LSTM, word-table and output weights.

The encoder here is small (four conv 3x3 / batch norm / ReLU blocks with 2x2 max pooling, global
average pooling, a linear image embedding) so that the model compiles in seconds; the paper used
GoogLeNet. Names follow a plain torch module (`encoder.block1.conv`, `encoder.embed`,
`decoder.embedding`, `decoder.lstm`, `decoder.fc`); the LSTM keeps ONNX's weights
(`decoder.lstm.W`, `.R`, `.B`: torch's weight_ih / weight_hh / bias_ih + bias_hh with the gates
reordered). The output is every step's logits [batch, max_length, vocab_size]; the caption is
their argmax along the last axis (the words the graph fed back)."""
from __future__ import annotations

from ..errors import ShapeError
from ..frontends import dsl
from ..ir import Graph

ENCODER_CHANNELS = (32, 64, 128, 256)


def nic_captioning(batch: int = 1, seed: int = 0, image_size: int = 64, vocab_size: int = 1000,
                   embed_size: int = 128, hidden_size: int = 256, max_length: int = 8,
                   start_word: int = 0) -> Graph:
    """An RGB image [batch, 3, image_size, image_size] (image_size at least 8) to the logits
    of `max_length` greedily decoded words after `start_word`."""
    if not 0 <= start_word < vocab_size:
        raise ShapeError(f"nic_captioning: expected start_word in [0, {vocab_size}), found "
                         f"{start_word}")
    with dsl.Builder("nic_captioning", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        with b.scope("encoder"):
            for i, channels in enumerate(ENCODER_CHANNELS, start=1):
                with b.scope(f"block{i}"):
                    x = dsl.relu(dsl.batch_norm(dsl.conv2d(x, channels, 3, padding=1,
                                                           bias=False, name="conv"), name="bn"),
                                 name="relu")
                    if i < len(ENCODER_CHANNELS):
                        x = dsl.max_pool2d(x, 2, name="pool")
            x = dsl.flatten(dsl.global_avg_pool2d(x, name="pool"), name="flatten")
            image = dsl.linear(x, embed_size, name="embed")
        with b.scope("decoder"):
            table = dsl.parameter("embedding.weight", (vocab_size, embed_size))
            # t = -1: the image embedding, from zero states
            _, h, c = dsl.lstm(dsl.reshape(image, (1, batch, embed_size), name="image"),
                               hidden_size, name="lstm")
            lstm_weights = dsl.inputs_of(h)[1:4]
            start = dsl.slice(table, [start_word], [start_word + 1], name="start")
            word = dsl.expand(start, (batch, embed_size), name="start_words")
            fc_weight = dsl.parameter("fc.weight", (vocab_size, hidden_size),
                                      std=(2 / hidden_size) ** 0.5)
            fc_bias = dsl.parameter("fc.bias", (vocab_size,), std=hidden_size ** -0.5)
            logits = []
            for t in range(max_length):
                with b.scope(f"step{t}"):
                    _, h, c = dsl.lstm(dsl.reshape(word, (1, batch, embed_size), name="input"),
                                       hidden_size, initial_h=h, initial_c=c,
                                       weight=lstm_weights[0],
                                       recurrence_weight=lstm_weights[1],
                                       bias_value=lstm_weights[2], name="lstm")
                    y = dsl.linear(dsl.reshape(h, (batch, hidden_size), name="hidden"),
                                   vocab_size, weight=fc_weight, bias_value=fc_bias, name="fc")
                    logits.append(dsl.reshape(y, (batch, 1, vocab_size), name="logits"))
                    if t + 1 < max_length:
                        word = dsl.embedding(dsl.argmax(y, axis=-1, name="word"), weight=table,
                                             name="embedding")
            return b.output(dsl.concat(logits, axis=1, name="logits"))
