"""The classifier: embedder -> encoder (chosen by name) -> pooler -> linear layer.

    ids (batch, time) --Embedder--> (batch, time, embedding_dim * channels)
        --encoder--> states (batch, time, encoder.output_size)
        --Pooler--> (batch, encoder.output_size) --dropout, Linear--> logits (batch, classes)

An encoder is one class in ENCODERS, chosen by `train.encoder`: adding one (a transformer layer, say) is
one new class here and one value in params.yaml. Every encoder must be *padding invariant*: the states
at a sequence's real positions may not depend on how much padding follows it (tests/test_model.py runs
each registered encoder through the same checks).

Batches are padded (length-bucketed, so padding is short), not packed: on CPU that is about twice as
fast as `pack_padded_sequence`. Padding must still never leak into the result, so in the recurrent
encoders:

- the forward direction's state is read at each sequence's true last token, not at the padded end;
- the backward direction runs over each sequence reversed *within its own length* (padding stays at
  the end), so it, too, starts at the true last token and ends at the first. That is why each
  direction is its own single-layer module rather than one `bidirectional=True` module, whose
  backward pass would start on the padding;
- max, mean and attention pooling mask the padded positions.
Outputs at padded positions depend only on earlier real tokens, so they never affect real positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embedding_dim: int
    num_classes: int
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    embedding_dropout: float = 0.2
    pooling: str = "max"  # last | max | mean | attention
    pad_id: int = 0
    # 2: a second, always-frozen copy of the pretrained vectors is concatenated to the trainable one
    # (Kim 2014's multichannel): fine-tuning adapts one copy while the other keeps the original geometry.
    embedding_channels: int = 1
    encoder: str = "lstm"  # a key of ENCODERS

    def to_dict(self) -> dict:
        return asdict(self)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a (batch, time, features) tensor over its first `length` steps.

    Positions past the length stay where they are. Applying it twice gives back the input.
    """
    batch, time = x.shape[:2]
    steps = torch.arange(time, device=x.device).expand(batch, time)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def padding_mask(lengths: torch.Tensor, time: int) -> torch.Tensor:
    """(batch, time) True at each sequence's real positions."""
    return torch.arange(time, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class Embedder(nn.Module):
    """Token ids -> vectors: the (pretrained) embedding, an optional frozen second channel, dropout."""

    def __init__(self, cfg: ModelConfig, embeddings: torch.Tensor | None = None, freeze: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=cfg.pad_id)
        if embeddings is not None:
            if tuple(embeddings.shape) != (cfg.vocab_size, cfg.embedding_dim):
                raise ValueError(f"embedding matrix {tuple(embeddings.shape)} does not match the config")
            with torch.no_grad():
                self.embedding.weight.copy_(embeddings)
        self.set_trainable(not freeze)
        self.static_embedding = None
        if cfg.embedding_channels == 2:
            self.static_embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=cfg.pad_id)
            self.static_embedding.weight.data.copy_(self.embedding.weight.data)
            self.static_embedding.weight.requires_grad_(False)
        elif cfg.embedding_channels != 1:
            raise ValueError(f"embedding_channels must be 1 or 2, got {cfg.embedding_channels}")
        self.dropout = nn.Dropout(cfg.embedding_dropout)
        self.output_size = cfg.embedding_dim * cfg.embedding_channels

    def set_trainable(self, trainable: bool) -> None:
        self.embedding.weight.requires_grad_(trainable)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)  # (batch, time, embedding_dim)
        if self.static_embedding is not None:
            x = torch.cat([x, self.static_embedding(ids)], dim=-1)  # (batch, time, 2 * embedding_dim)
        return self.dropout(x)


class RecurrentEncoder(nn.Module):
    """Stacked recurrent layers, each direction its own single-layer module (module docstring)."""

    cell: type[nn.Module] = nn.LSTM

    def __init__(self, cfg: ModelConfig, input_size: int):
        super().__init__()
        self.hidden_size, self.bidirectional = cfg.hidden_size, cfg.bidirectional
        directions = 2 if cfg.bidirectional else 1
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(cfg.num_layers):
            size_in = input_size if layer == 0 else cfg.hidden_size * directions
            self.forward_layers.append(self.cell(size_in, cfg.hidden_size, batch_first=True))
            if cfg.bidirectional:
                self.backward_layers.append(self.cell(size_in, cfg.hidden_size, batch_first=True))
        self.between_layers = nn.Dropout(cfg.dropout)
        self.output_size = cfg.hidden_size * directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time, input_size) -> (batch, time, output_size)."""
        for i, forward_layer in enumerate(self.forward_layers):
            if i:
                x = self.between_layers(x)
            out, _ = forward_layer(x)
            if self.bidirectional:
                back, _ = self.backward_layers[i](reverse_within_length(x, lengths))
                out = torch.cat([out, reverse_within_length(back, lengths)], dim=-1)
            x = out
        return x

    def final_state(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, output_size): the forward direction at the last real token; the backward direction
        has read the whole sequence when it reaches position 0."""
        last = states[torch.arange(states.shape[0], device=states.device), lengths - 1]
        if not self.bidirectional:
            return last
        return torch.cat([last[:, :self.hidden_size], states[:, 0, self.hidden_size:]], dim=-1)


class LSTMEncoder(RecurrentEncoder):
    cell = nn.LSTM


class GRUEncoder(RecurrentEncoder):
    cell = nn.GRU


class CNNEncoder(nn.Module):
    """Stacked 1-d convolutions over time (kernel 3, `hidden_size` filters, ReLU), padded positions
    zeroed before each layer, so a window that reaches past a sequence's end sees zeros either way."""

    kernel_size = 3

    def __init__(self, cfg: ModelConfig, input_size: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv1d(input_size if layer == 0 else cfg.hidden_size, cfg.hidden_size, self.kernel_size,
                      padding=self.kernel_size // 2)
            for layer in range(cfg.num_layers))
        self.between_layers = nn.Dropout(cfg.dropout)
        self.output_size = cfg.hidden_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = padding_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1)  # (batch, time, 1)
        for i, conv in enumerate(self.layers):
            if i:
                x = self.between_layers(x)
            x = x.masked_fill(~real, 0.0)
            x = torch.relu(conv(x.transpose(1, 2))).transpose(1, 2)  # (batch, time, hidden_size)
        return x

    def final_state(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return states[torch.arange(states.shape[0], device=states.device), lengths - 1]


ENCODERS: dict[str, type[nn.Module]] = {"lstm": LSTMEncoder, "gru": GRUEncoder, "cnn": CNNEncoder}


class Pooler(nn.Module):
    """(batch, time, features) states -> (batch, features): last, max, mean or attention, padding masked."""

    def __init__(self, pooling: str, size: int):
        super().__init__()
        if pooling not in ("last", "max", "mean", "attention"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.pooling = pooling
        self.attention = nn.Linear(size, 1) if pooling == "attention" else None

    def forward(self, states: torch.Tensor, lengths: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        lengths = lengths.to(states.device)
        if self.pooling == "last":
            return encoder.final_state(states, lengths)
        mask = padding_mask(lengths, states.shape[1])  # (batch, time)
        if self.pooling == "max":
            return states.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
        if self.pooling == "mean":
            summed = (states * mask.unsqueeze(-1)).sum(dim=1)
            return summed / lengths.unsqueeze(1).to(states.dtype)
        return torch.bmm(self.weights(states, lengths).unsqueeze(1), states).squeeze(1)

    def weights(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention pooling's weights over time, (batch, time), zero on padding."""
        scores = self.attention(states).squeeze(-1).masked_fill(~padding_mask(lengths, states.shape[1]), float("-inf"))
        return torch.softmax(scores, dim=1)


class TextClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, embeddings: torch.Tensor | None = None, freeze_embeddings: bool = False):
        super().__init__()
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {cfg.encoder!r} (known: {', '.join(ENCODERS)})")
        self.cfg = cfg
        self.embedder = Embedder(cfg, embeddings, freeze_embeddings)
        self.encoder = ENCODERS[cfg.encoder](cfg, self.embedder.output_size)
        self.pooler = Pooler(cfg.pooling, self.encoder.output_size)
        self.output_dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(self.encoder.output_size, cfg.num_classes)
        # Temperature scaling (pipeline.calibration): the probabilities are softmax(logits / temperature).
        # Not a weight (kept out of the state dict): training sees 1; load_checkpoint sets the fitted value,
        # and every probability that leaves the model (inference, export, explanations) divides by it.
        self.register_buffer("temperature", torch.ones(()), persistent=False)
        # A multi-label model's labels each have their own probability (a sigmoid), not a share of one (a
        # softmax); load_checkpoint sets it from the checkpoint's task (pipeline.tasks).
        self.multi_label = False

    def set_embeddings_trainable(self, trainable: bool) -> None:
        self.embedder.set_trainable(trainable)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time) token ids and true lengths -> (batch, features) sentence representation."""
        return self.pooler(self.encoder(self.embedder(ids), lengths), lengths, self.encoder)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.output_dropout(self.encode(ids, lengths)))  # (batch, classes)

    def probabilities(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities, float32 (batch, classes): softmax(logits / temperature); for a
        multi-label model each label's own, sigmoid(logits / temperature)."""
        scaled = self(ids, lengths).float() / self.temperature.float()
        return torch.sigmoid(scaled) if self.multi_label else torch.softmax(scaled, dim=-1)
