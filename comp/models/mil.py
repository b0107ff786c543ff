"""Multiple-instance (MIL) models: one prediction from the N images of a MIL row (the slices of a series,
the views of a breast, the tiles of a slide; comp.data.mil), after the Kaggle winners' 2D-backbone pattern.

Any backbone the factory builds with `num_classes=0` (the kit's ResNets, any timm model) embeds each of
the B*N instances; a pool turns the (B, N, F) instance features into one (B, F') row feature; dropout; a
Linear head gives (B, num_logits):

    x (B, N, C, H, W) -> backbone -> (B, N, F) -> pool -> (B, F') -> dropout -> head -> (B, num_logits)

Pools (`POOLS`, config `mil.pool`):
  - mean, max: over N, no parameters;
  - attention: gated attention of Ilse, Tomczak & Welling 2018 (arXiv 1802.04712, eq. 9),
    a_k = softmax_k(w^T (tanh(V h_k) * sigm(U h_k))), z = sum_k a_k h_k, L = 128 as in the paper;
  - gru: a bidirectional GRU over the instances in their order (slice order), outputs averaged;
  - transformer: a small pre-LN nn.TransformerEncoder (2 layers, 4 heads) over the instances projected to
    256 dims, with a learned position embedding (slice order), outputs averaged.
mean, max and attention are invariant to the order of the instances; gru and transformer are not.

The model keeps timm's interface, so the rest of the kit treats it as any other model:
`forward_features` (the backbone's feature maps, (B, N, ...): Grad-CAM's layer), `forward_head(f,
pre_logits)` (pooled features or logits), `get_classifier` (pool + head: the layers a frozen-backbone
warm-up trains and the optimizer gives the full lr), `reset_classifier`, `num_features`, and a
`pretrained_cfg` whose first conv and classifier are named in this model's keys (`backbone.*`, `pool.*`,
`head.*`), so comp.models.factory.load_pretrained loads a MIL checkpoint into a MIL model.
"""

from __future__ import annotations

import torch
from torch import nn

from comp.errors import UserError

POOLS = ("mean", "max", "attention", "gru", "transformer")
ATTENTION_DIM = 128  # L of Ilse et al. 2018 (their MNIST-bags and histopathology models)
SEQ_DIM = 256  # gru: hidden size per direction is SEQ_DIM // 2; transformer: d_model
MAX_INSTANCES = 512  # transformer: positions of the learned embedding (mil.instances x series must fit)


def check_pool(pool: str) -> str:
    """`pool` when it is one of POOLS.

    Raises:
        UserError: an unknown name, naming `mil.pool` and the choices.
    """
    if pool not in POOLS:
        raise UserError(f"mil.pool: unknown pool {pool!r}; choose from {', '.join(POOLS)}")
    return pool


class MeanPool(nn.Module):
    """Mean over the instances; weights uniform (1 / N)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_features = dim

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, F) -> pooled (B, F), instance features (B, N, F), weights (B, N)."""
        w = torch.full(h.shape[:2], 1.0 / h.shape[1], device=h.device)
        return h.mean(1), h, w


class MaxPool(nn.Module):
    """Max over the instances per feature; an instance's weight is the share of the F features whose max
    it gives, a feature tied between k instances counting 1/k to each (a ReLU feature that is 0 in every
    instance counts alike for all), so the weights follow the instances in any order."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_features = dim

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, F) -> pooled (B, F), instance features (B, N, F), weights (B, N)."""
        pooled = h.amax(1)  # (B, F)
        won = (h == pooled.unsqueeze(1)).float()  # (B, N, F): 1 where the instance gives the feature's max
        w = (won / won.sum(1, keepdim=True)).mean(2)  # (B, N), rows sum to 1
        return pooled, h, w.detach()


class AttentionPool(nn.Module):
    """Gated attention (Ilse et al. 2018, arXiv 1802.04712, eq. 9): a_k = softmax_k(w^T (tanh(V h_k) *
    sigm(U h_k))), pooled = sum_k a_k h_k. Linear layers with biases, as the authors' code
    (github.com/AMLab-Amsterdam/AttentionDeepMIL, model.py GatedAttention)."""

    def __init__(self, dim: int, hidden: int = ATTENTION_DIM):
        super().__init__()
        self.out_features = dim
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, F) -> pooled (B, F), instance features (B, N, F), attention weights (B, N), rows sum to 1."""
        scores = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)  # (B, N)
        a = scores.float().softmax(1)  # in float32 under autocast too: weights that sum to 1
        return (a.unsqueeze(-1).to(h.dtype) * h).sum(1), h, a


class GruPool(nn.Module):
    """A bidirectional GRU over the instances in order; pooled = the mean of its outputs. Its per-instance
    outputs (B, N, SEQ_DIM), which carry their neighbours' context, are the instance features of the
    auxiliary head. Weights uniform: no single instance's share is defined."""

    def __init__(self, dim: int, hidden: int = SEQ_DIM // 2):
        super().__init__()
        self.out_features = 2 * hidden
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, F) -> pooled (B, 2 hidden), outputs (B, N, 2 hidden), weights (B, N) uniform."""
        out, _ = self.gru(h)  # (B, N, 2 hidden)
        w = torch.full(h.shape[:2], 1.0 / h.shape[1], device=h.device)
        return out.mean(1), out, w


class TransformerPool(nn.Module):
    """Instances projected to `dim`, a learned position embedding added (their order: slice order), a
    small pre-LN nn.TransformerEncoder; pooled = the mean of its outputs. Per-instance outputs are the
    auxiliary head's instance features; weights uniform (attention maps per layer and head do not give
    one share per instance)."""

    def __init__(self, in_dim: int, dim: int = SEQ_DIM, layers: int = 2, heads: int = 4,
                 max_instances: int = MAX_INSTANCES):
        super().__init__()
        self.out_features = dim
        self.proj = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_instances, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)  # as ViT's position embedding (timm)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        # nested tensors only serve padding masks, which fixed-N rows do not have (and pre-LN refuses them)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, F) -> pooled (B, dim), outputs (B, N, dim), weights (B, N) uniform.

        Raises:
            UserError: N above the position embedding's length.
        """
        n, max_n = h.shape[1], self.pos.shape[1]
        if n > max_n:
            raise UserError(f"mil.pool: transformer: {n} instances per row, more than its {max_n} positions; "
                            "lower mil.instances")
        out = self.encoder(self.proj(h) + self.pos[:, :n])
        w = torch.full(h.shape[:2], 1.0 / n, device=h.device)
        return out.mean(1), out, w


def make_pool(pool: str, dim: int) -> nn.Module:
    """The pool module `pool` (POOLS) over `dim`-dim instance features; `.out_features` its output dim.

    Raises:
        UserError: an unknown pool name (naming mil.pool).
    """
    check_pool(pool)
    if pool == "transformer":
        return TransformerPool(dim)
    return {"mean": MeanPool, "max": MaxPool, "attention": AttentionPool, "gru": GruPool}[pool](dim)


class MilModel(nn.Module):
    """A backbone over every instance, a pool over them, dropout, a Linear head.

    Args:
        backbone: a model built with num_classes=0 (comp.models.factory.create_model), with timm's
            interface (`forward_features`, `forward_head(pre_logits=True)`, `num_features`).
        num_logits: head outputs (0: no head, the model returns pooled features).
        pool: one of POOLS (mil.pool).
        drop_rate: dropout on the pooled (and the instance) features, before the head.

    Attributes:
        instance_weights: (B, N) float32 of the last forward, detached: each instance's share of the
            pooled feature (attention: the softmax weights; max: the share of features it wins; mean,
            gru, transformer: uniform 1/N). Grad-CAM picks the instances that weigh most. Clone it to
            keep it past the next forward (a compiled model in CUDA graphs reuses its memory).

    Raises:
        UserError: an unknown pool.
        ValueError: a backbone with a classifier (the kit's bug, not the user's).
    """

    def __init__(self, backbone: nn.Module, num_logits: int, pool: str, drop_rate: float = 0.0):
        super().__init__()
        if not isinstance(backbone.get_classifier(), nn.Identity):
            raise ValueError("MilModel: the backbone must be built with num_classes=0 (pooled features out)")
        self.pool_name = pool
        self.backbone = backbone
        self.pool = make_pool(pool, backbone.num_features)
        self.num_features = self.pool.out_features  # what forward_head(pre_logits=True) returns per row
        self.drop = nn.Dropout(drop_rate)  # no state: no key in the state dict
        self.num_classes = num_logits
        self.head: nn.Module = nn.Linear(self.num_features, num_logits) if num_logits > 0 else nn.Identity()
        self.instance_weights: torch.Tensor | None = None
        cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        first = cfg.get("first_conv")
        first = [first] if isinstance(first, str) else list(first or [])
        # the backbone's (mean, std, input size ...), its first conv and the classifier in this model's keys
        self.pretrained_cfg = {**cfg, "first_conv": tuple(f"backbone.{c}" for c in first),
                               "classifier": ("pool", "head")}

    def get_classifier(self) -> nn.Module:
        """The pool and the head, as one module (a fresh container over the model's own submodules): the
        new layers, trained alone in a frozen-backbone warm-up and at the full lr (comp.train.optim)."""
        return nn.ModuleList([self.pool, self.head])

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised head with `num_classes` outputs (0: identity); the pool is kept."""
        self.num_classes = num_classes
        p = next(self.parameters())  # the new layer goes where the model is (device, dtype)
        self.head = nn.Identity()
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype)

    @staticmethod
    def _as_instances(x: torch.Tensor) -> torch.Tensor:
        """(B, N, C, H, W) as it is, (B, C, H, W) as N=1."""
        if x.ndim == 4:
            return x.unsqueeze(1)
        if x.ndim != 5:
            raise ValueError(f"MilModel: input must be (B, N, C, H, W) or (B, C, H, W), got {tuple(x.shape)}")
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C, H, W) (or (B, C, H, W): N=1) -> the backbone's feature maps per instance, (B, N, ...)
        (a CNN's (B, N, F, h, w), a ViT's tokens (B, N, T, F))."""
        x = self._as_instances(x)
        return self.backbone.forward_features(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def _instances(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature maps (B, N, ...) -> pooled (B, F') and instance features (B, N, F'), dropout applied;
        sets `instance_weights`."""
        h = self.backbone.forward_head(f.flatten(0, 1), pre_logits=True).unflatten(0, f.shape[:2])  # (B, N, F)
        pooled, inst, w = self.pool(h)
        self.instance_weights = w.detach()
        return self.drop(pooled), self.drop(inst)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`forward_features`' output -> pooled features (B, num_features) if `pre_logits`, else logits
        (B, num_logits)."""
        pooled, _ = self._instances(f)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor,
                with_instances: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C, H, W) (or (B, C, H, W): N=1) -> logits (B, num_logits); with `with_instances`, also
        the head applied to each instance's features, (B, N, num_logits), from the same forward pass:
        the input of an instance-level auxiliary loss (mil.aux_weight)."""
        pooled, inst = self._instances(self.forward_features(x))
        return (self.head(pooled), self.head(inst)) if with_instances else self.head(pooled)

    def instance_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head on each instance's features (after the pool for gru/transformer, whose per-instance
        outputs carry context): (B, N, num_logits). A forward pass of its own; in training use
        `forward(x, with_instances=True)`, which gives both from one."""
        return self(x, with_instances=True)[1]
