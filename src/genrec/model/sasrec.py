"""SASRec baseline (Kang & McAuley 2018): softmax causal Transformer with learned positions,
laid out as the official SASRec (LayerNorm'd query, residual from it, point-wise FFN, final norm).

Runs padded internally (it is the baseline, not the hot path). Shapes: T tokens, B sequences,
n longest length, D model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig
from genrec.model.feed_forward import feed_forward_flops, point_wise_feed_forward
from genrec.model.recompute import run_layer
from genrec.ops.attention import attention_flops
from genrec.ops.attention.length_groups import by_length_groups
from genrec.ops.jagged import jagged_to_padded, lengths_from_offsets, padded_to_jagged


class SASRecBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = point_wise_feed_forward(dim, dropout)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x [B, n, D]; padding [B, n] True where there is no token."""
        query = self.attention_norm(x)
        key, value = self.kv(x).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(
            self._heads(self.q(query)), self._heads(key), self._heads(value), is_causal=True,
            dropout_p=self.dropout if self.training else 0.0)
        x = query + self.out(attended.transpose(1, 2).reshape(x.shape))
        x = self.ffn_norm(x)
        x = x + self.ffn(x)
        return x.masked_fill(padding.unsqueeze(-1), 0.0)


class SASRecEncoder(nn.Module):
    def __init__(self, config: ModelConfig, max_seq_len: int) -> None:
        super().__init__()
        dim = config.embedding_dim
        self.blocks = nn.ModuleList(SASRecBlock(dim, config.num_heads, config.dropout)
                                    for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)
        self.checkpoint_layers = config.checkpoint_layers

    def forward(self, x: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor | None,
                num_targets: torch.Tensor | None = None, sorted_timestamps: bool = False,
                query_times: torch.Tensor | None = None, token_query_times: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, D] -> [T, D]; timestamps, their order and query times are unused (SASRec has no time signal)."""
        if num_targets is not None:
            raise ValueError("SASRec does not support candidate (num_targets) scoring")
        if x.device.type == "cpu":  # each group of like lengths padded to its own longest, not to the batch's
            return by_length_groups(lambda _, rows, offsets: self._padded_stack(x[rows], offsets), seq_offsets)
        return self._padded_stack(x, seq_offsets)

    def _padded_stack(self, x: torch.Tensor, seq_offsets: torch.Tensor) -> torch.Tensor:
        """The blocks over the sequences padded to their longest, as FlashAttention-based stacks run."""
        lengths = lengths_from_offsets(seq_offsets)
        n = int(lengths.max()) if lengths.numel() else 0
        padded = jagged_to_padded(x, seq_offsets, n)
        padding = torch.arange(n, device=x.device).view(1, n) >= lengths.view(-1, 1)
        for index, block in enumerate(self.blocks):
            padded = run_layer(block, index < self.checkpoint_layers, padded, padding)
        return padded_to_jagged(self.final_norm(padded), seq_offsets)

    def forward_flops(self, lengths: torch.Tensor) -> float:
        """Matrix-multiply FLOPs of one forward pass (useful causal pairs only, not the padding)."""
        dim, heads = self.final_norm.normalized_shape[0], self.blocks[0].num_heads
        per_token = 2 * 4 * dim * dim + feed_forward_flops(dim)  # q, k, v, out and the FFN
        per_block = float(lengths.sum()) * per_token + attention_flops(lengths, heads, dim // heads, dim // heads)
        return len(self.blocks) * per_block
