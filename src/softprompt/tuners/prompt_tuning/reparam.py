"""Reparameterised soft prompts: a small network between the raw embeddings and the prompt.

`method.prompt_tuning.reparameterize` picks one of:

- `mlp`: P-tuning's MLP encoder, as PEFT's `PromptEncoder` with
  `encoder_reparameterization_type="MLP"`: Linear(D, H) -> ReLU -> Linear(H, H) -> ReLU ->
  Linear(H, D), applied to every prompt vector.
- `lstm`: P-tuning's LSTM encoder, as PEFT's with `"LSTM"`: a two-layer bidirectional LSTM
  of width H over the prompt positions, then Linear(2H, 2H) -> ReLU -> Linear(2H, D).
- `residual`: residual prompt tuning (Razdaibiedina et al., 2023), a bottleneck MLP with
  a skip connection shared by every prompt vector:
  `out = emb + LayerNorm(W_up(ReLU(W_down(emb))))`.

The encoders keep PEFT's parameter names (`mlp_head`, `lstm_head`), so a PEFT P-tuning
encoder's weights load into ours with `load_state_dict`. Every encoder maps the (P, D)
raw embeddings to the (P, D) prompt; once training ends its output is all that matters,
so a saved prompt holds that output as plain PEFT prompt-tuning embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.tuners.prompt_tuning.config import PromptTuningConfig

# H when `reparameterize_hidden_size` is not set: PEFT's P-tuning uses the token width;
# the residual paper's bottleneck is a few hundred units wide.
DEFAULT_RESIDUAL_BOTTLENECK = 400
# PEFT's `encoder_num_layers` default, the LSTM's depth.
LSTM_LAYERS = 2


class MLPEncoder(nn.Module):
    """P-tuning's MLP head (PEFT `PromptEncoder`, MLP type).

    Args:
        token_dim: D, the backbone's embedding width.
        hidden_size: H.
    """

    def __init__(self, token_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp_head = nn.Sequential(
            nn.Linear(token_dim, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, token_dim),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """(P, D) raw embeddings -> (P, D) prompt."""
        return self.mlp_head(embeds)


class LSTMEncoder(nn.Module):
    """P-tuning's LSTM head (PEFT `PromptEncoder`, LSTM type).

    Args:
        token_dim: D.
        hidden_size: H, the width of each LSTM direction.
        dropout: between the LSTM's layers (PEFT's `encoder_dropout`).
    """

    def __init__(self, token_dim: int, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.lstm_head = nn.LSTM(
            input_size=token_dim,
            hidden_size=hidden_size,
            num_layers=LSTM_LAYERS,
            dropout=dropout,
            bidirectional=True,
            batch_first=True,
        )
        self.mlp_head = nn.Sequential(
            nn.Linear(hidden_size * 2, hidden_size * 2),
            nn.ReLU(),
            nn.Linear(hidden_size * 2, token_dim),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """(P, D) raw embeddings -> (P, D) prompt (the LSTM reads the P positions in order)."""
        states, _ = self.lstm_head(embeds.unsqueeze(0))
        return self.mlp_head(states[0])


class ResidualEncoder(nn.Module):
    """Residual reparameterisation: `emb + LayerNorm(up(ReLU(down(emb))))`.

    The LayerNorm's gain starts at zero, so at step 0 the prompt is exactly its
    initialisation (VOCAB / TEXT rows keep their meaning) and the branch grows from
    there: the gain gets a gradient at the first step, the two projections from the
    second on. (The paper keeps PyTorch's default gain of one; T5's large embeddings
    hide the branch's unit-variance output, but the embeddings of most causal LMs are
    far smaller and would be swamped by it.)

    Args:
        token_dim: D.
        bottleneck: m, the width of the down-projection.
        dropout: on the branch's output, before the LayerNorm (as the authors' code).
    """

    def __init__(self, token_dim: int, bottleneck: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(token_dim, bottleneck)
        self.up = nn.Linear(bottleneck, token_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(token_dim)
        nn.init.zeros_(self.norm.weight)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """(P, D) raw embeddings -> (P, D) prompt."""
        branch = self.up(torch.relu(self.down(embeds)))
        return embeds + self.norm(self.dropout(branch))


def encoder_hidden_size(config: PromptTuningConfig, token_dim: int) -> int:
    """H of the configured encoder: the configured size, else the kind's default."""
    if config.reparameterize_hidden_size is not None:
        return config.reparameterize_hidden_size
    return DEFAULT_RESIDUAL_BOTTLENECK if config.reparameterize == "residual" else token_dim


def build_encoder(config: PromptTuningConfig, token_dim: int, seed: int) -> nn.Module | None:
    """The encoder `config.reparameterize` asks for (None for `none`).

    Its weights are drawn from PyTorch's default initialisers under `seed` on a forked
    random state, so the same config and seed give the same encoder and the run's own
    random stream is left where it was.
    """
    kind = config.reparameterize
    if kind == "none":
        return None
    hidden = encoder_hidden_size(config, token_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "mlp":
            return MLPEncoder(token_dim, hidden)
        if kind == "lstm":
            return LSTMEncoder(token_dim, hidden, config.reparameterize_dropout)
        return ResidualEncoder(token_dim, hidden, config.reparameterize_dropout)
