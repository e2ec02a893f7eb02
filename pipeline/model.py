"""The LSTM classifier.

Batches are padded (length-bucketed, so padding is short), not packed: on CPU that is about twice as
fast as `pack_padded_sequence`. Padding must still never leak into the result, so:

- the forward direction's state is read at each sequence's true last token, not at the padded end;
- the backward direction runs over each sequence reversed *within its own length* (padding stays at
  the end), so it, too, starts at the true last token and ends at the first. That is why each
  direction is its own single-layer nn.LSTM rather than one `bidirectional=True` module, whose
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


class LSTMClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, embeddings: torch.Tensor | None = None, freeze_embeddings: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=cfg.pad_id)
        if embeddings is not None:
            if tuple(embeddings.shape) != (cfg.vocab_size, cfg.embedding_dim):
                raise ValueError(f"embedding matrix {tuple(embeddings.shape)} does not match the config")
            with torch.no_grad():
                self.embedding.weight.copy_(embeddings)
        self.set_embeddings_trainable(not freeze_embeddings)
        self.static_embedding = None
        if cfg.embedding_channels == 2:
            self.static_embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=cfg.pad_id)
            self.static_embedding.weight.data.copy_(self.embedding.weight.data)
            self.static_embedding.weight.requires_grad_(False)
        elif cfg.embedding_channels != 1:
            raise ValueError(f"embedding_channels must be 1 or 2, got {cfg.embedding_channels}")
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)
        directions = 2 if cfg.bidirectional else 1
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(cfg.num_layers):
            size_in = cfg.embedding_dim * cfg.embedding_channels if layer == 0 else cfg.hidden_size * directions
            self.forward_layers.append(nn.LSTM(size_in, cfg.hidden_size, batch_first=True))
            if cfg.bidirectional:
                self.backward_layers.append(nn.LSTM(size_in, cfg.hidden_size, batch_first=True))
        self.between_layers = nn.Dropout(cfg.dropout)
        out_size = cfg.hidden_size * directions
        self.attention = nn.Linear(out_size, 1) if cfg.pooling == "attention" else None
        self.output_dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(out_size, cfg.num_classes)

    def set_embeddings_trainable(self, trainable: bool) -> None:
        self.embedding.weight.requires_grad_(trainable)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time) token ids and true lengths -> (batch, features) sentence representation."""
        x = self.embedding(ids)
        if self.static_embedding is not None:
            x = torch.cat([x, self.static_embedding(ids)], dim=-1)
        x = self.embedding_dropout(x)
        for i, fwd in enumerate(self.forward_layers):
            if i:
                x = self.between_layers(x)
            out, _ = fwd(x)
            if self.cfg.bidirectional:
                back, _ = self.backward_layers[i](reverse_within_length(x, lengths))
                out = torch.cat([out, reverse_within_length(back, lengths)], dim=-1)
            x = out
        return self.pool(x, lengths)

    def pool(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, time, _ = states.shape
        lengths = lengths.to(states.device)
        mask = torch.arange(time, device=states.device).unsqueeze(0) < lengths.unsqueeze(1)  # (batch, time)
        pooling = self.cfg.pooling
        if pooling == "last":
            h = self.cfg.hidden_size
            last = states[torch.arange(batch, device=states.device), lengths - 1]
            if not self.cfg.bidirectional:
                return last
            # The backward direction has read the whole sequence when it reaches position 0.
            return torch.cat([last[:, :h], states[:, 0, h:]], dim=-1)
        if pooling == "max":
            return states.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
        if pooling == "mean":
            summed = (states * mask.unsqueeze(-1)).sum(dim=1)
            return summed / lengths.unsqueeze(1).to(states.dtype)
        if pooling == "attention":
            scores = self.attention(states).squeeze(-1).masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=1)
            return torch.bmm(weights.unsqueeze(1), states).squeeze(1)
        raise ValueError(f"unknown pooling {pooling!r}")

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.output_dropout(self.encode(ids, lengths)))
