"""Sequence models: a recurrent net (GRU/LSTM) and a pre-norm Transformer encoder.

Both read a flat row as ``input_shape`` (C, L), feature-major (the view a 1-D CNN uses),
and turn it into L steps of C features, batch first. They are built from the standard
torch layers (``nn.GRU``/``nn.LSTM``, ``nn.TransformerEncoder``) with no data-dependent
Python in ``forward``, so torch.onnx exports them. ``shapes.rnn_parameters`` and
``shapes.transformer_parameters`` count the same parameters without torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from app import spec as s

POSITION_INIT_STD = 0.02  # learned positions and the cls token start small (BERT, GPT-2)


def steps_of(x: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """(N, C * L) rows, feature-major -> (N, L, C) steps."""
    return x.view(x.shape[0], *input_shape).transpose(1, 2)


class SequenceRNN(nn.Module):
    """Args: spec, input_shape (C, L), n_out. Shape: (N, C * L) -> (N, n_out)."""

    def __init__(self, spec: s.RNN, input_shape: tuple[int, ...], n_out: int) -> None:
        super().__init__()
        self.input_shape = input_shape
        cell = nn.LSTM if spec.cell == "lstm" else nn.GRU
        # torch applies the dropout between stacked layers only (and warns on one layer)
        self.rnn = cell(input_shape[0], spec.hidden, num_layers=spec.layers, batch_first=True,
                        bidirectional=spec.bidirectional,
                        dropout=spec.dropout if spec.layers > 1 else 0.0)
        self.directions = 2 if spec.bidirectional else 1
        self.lstm, self.mean = spec.cell == "lstm", spec.pooling == "mean"
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(self.directions * spec.hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(steps_of(x, self.input_shape))
        if self.mean:
            pooled = out.mean(dim=1)
        else:  # the top layer's final state per direction (the backward one ends at step 0)
            final = state[0] if self.lstm else state
            pooled = final[-self.directions:].transpose(0, 1).reshape(x.shape[0], -1)
        logits: torch.Tensor = self.head(self.drop(pooled))
        return logits


def sinusoidal_positions(tokens: int, width: int) -> torch.Tensor:
    """(1, tokens, width): sin on even features, cos on odd ones (Vaswani et al., 2017)."""
    position = torch.arange(tokens, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    table = torch.zeros(tokens, width)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: width // 2])
    return table[None]


class SequenceTransformer(nn.Module):
    """Args: spec, input_shape (C, L), n_out. Shape: (N, C * L) -> (N, n_out).

    Each step's C features are projected to d_model; a cls token is prepended when
    pooling=cls; positions are added; pre-norm encoder layers and a final LayerNorm follow.
    """

    def __init__(self, spec: s.Transformer, input_shape: tuple[int, ...], n_out: int) -> None:
        super().__init__()
        self.input_shape, width = input_shape, spec.d_model
        self.embed = nn.Linear(input_shape[0], width)
        self.cls = (nn.Parameter(torch.randn(1, 1, width) * POSITION_INIT_STD)
                    if spec.pooling == "cls" else None)
        tokens = input_shape[1] + int(self.cls is not None)
        self.position: torch.Tensor
        if spec.positional == "learned":
            self.position = nn.Parameter(torch.randn(1, tokens, width) * POSITION_INIT_STD)
        else:  # a pure function of the shape: rebuilt, never stored in a checkpoint
            self.register_buffer("position", sinusoidal_positions(tokens, width),
                                 persistent=False)
        layer = nn.TransformerEncoderLayer(width, spec.heads, spec.ff, spec.dropout,
                                           activation=spec.activation, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, spec.layers, norm=nn.LayerNorm(width),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(steps_of(x, self.input_shape))
        if self.cls is None:
            pooled = self.encoder(tokens + self.position).mean(dim=1)
        else:
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
            pooled = self.encoder(tokens + self.position)[:, 0]
        logits: torch.Tensor = self.head(pooled)
        return logits
