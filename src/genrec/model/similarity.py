"""How a user embedding scores an item embedding (both l2-normalised): the dot product (a cosine), or a
learned mixture of logits (MoL; Zhai et al., KDD'23, "Revisiting Neural Retrieval on Accelerators"),
the similarity behind the best published result on the ML-1M protocol. Both score in [-1, 1], so the
loss temperature means the same for either.

Shapes: B users, I items, D embedding dim, P user components, Q item components, C component dim,
K = P * Q component pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig

# all(): items scored per chunk so that B * chunk * K stays near this many elements
_PAIRS_PER_CHUNK = 1 << 25


class Similarity(nn.Module):
    """A similarity is item_features (what depends on the item alone, so a loss can compute it once per
    catalog row and gather it), score (users against item features) and all (users x catalog)."""

    def pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[..., D] x [..., D] (broadcast) -> [...]."""
        return self.score(users, self.item_features(items))


class DotSimilarity(Similarity):
    def item_features(self, items: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., F]; here F = D, the embedding itself."""
        return items

    def score(self, users: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """[..., D] x [..., F] (broadcast) -> [...]."""
        return (users * features).sum(-1)

    def all(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, D] x [I, D] -> [B, I]."""
        return users @ items.T


class MixtureOfLogits(Similarity):
    """s(u, x) = sum_k gate_k(u, x) * cos(f_p(u), g_q(x)) over the K component pairs k = (p, q), where
    f and g are learned projections into P and Q unit-norm components and the gate is a softmax over K
    of a user term, an item term and a small MLP of the K cosines themselves."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        mol, dim = config.mol, config.embedding_dim
        self.user_parts, self.item_parts, self.part_dim = mol.user_components, mol.item_components, mol.component_dim
        pairs = self.user_parts * self.item_parts
        self.user_components = nn.Linear(dim, self.user_parts * self.part_dim)
        self.item_components = nn.Linear(dim, self.item_parts * self.part_dim)
        self.user_gate = nn.Linear(dim, pairs)
        self.item_gate = nn.Linear(dim, pairs)
        self.pair_gate = nn.Sequential(nn.Linear(pairs, mol.gate_hidden), nn.SiLU(), nn.Linear(mol.gate_hidden, pairs))

    def _side(self, x: torch.Tensor, components: nn.Linear, parts: int, gate: nn.Linear):
        """[..., D] -> unit components [..., parts, C] and this side's gate term [..., K]."""
        return F.normalize(components(x).unflatten(-1, (parts, self.part_dim)), dim=-1), gate(x)

    def _mix(self, cosines: torch.Tensor, user_gate: torch.Tensor, item_gate: torch.Tensor) -> torch.Tensor:
        gate = torch.softmax((user_gate + item_gate + self.pair_gate(cosines)).float(), dim=-1)
        return (gate * cosines.float()).sum(-1)

    def item_features(self, items: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., Q * C + K]: the unit item components, then the item's gate term."""
        parts, gate = self._side(items, self.item_components, self.item_parts, self.item_gate)
        return torch.cat([parts.flatten(-2), gate.to(parts.dtype)], dim=-1)

    def score(self, users: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """[..., D] x [..., Q * C + K] (broadcast) -> [...]."""
        user_parts, user_gate = self._side(users, self.user_components, self.user_parts, self.user_gate)
        split = self.item_parts * self.part_dim
        item_parts = features[..., :split].unflatten(-1, (self.item_parts, self.part_dim))
        cosines = torch.einsum("...pc,...qc->...pq", user_parts.to(item_parts.dtype), item_parts).flatten(-2)
        return self._mix(cosines, user_gate, features[..., split:])

    def all(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, D] x [I, D] -> [B, I], items in chunks (the [B, I, K] cosines are never whole)."""
        features = self.item_features(items)
        chunk = max(1, _PAIRS_PER_CHUNK // max(1, users.shape[0] * self.user_parts * self.item_parts))
        scores = [self.score(users[:, None], features[None, start:start + chunk])
                  for start in range(0, items.shape[0], chunk)]
        return torch.cat(scores, dim=1) if scores else users.new_zeros(users.shape[0], 0)


def build_similarity(config: ModelConfig) -> Similarity:
    return MixtureOfLogits(config) if config.similarity == "mol" else DotSimilarity()
