"""The offline reward model of Prompt-OIRL: P(correct | query, prompt) from embeddings.

Following Prompt-OIRL (arXiv 2309.06553, Sec. 4), the reward model sees only embeddings of the
query and of the prompt (here the mean-pooled last hidden states of the expensive model itself,
computed once per text; no call that generates), and is fit to the logged correctness labels with
the binary cross-entropy

    L(theta) = - 1/N sum_(q,p) [ y_qp log sigma(f_theta(q, p)) + (1 - y_qp) log(1 - sigma(f_theta(q, p))) ].

The paper fits gradient-boosted trees (XGBoost) to the concatenated embeddings; this example uses
a small torch MLP on the concatenation of PCA-reduced query and prompt embeddings (no new
dependency), chooses its width and weight decay on held-out logged queries with early stopping,
then refits an ensemble of seeds on all the logged data for the chosen number of epochs.
At inference, the policy picks argmax_p sigma(f(q, p)) over the candidate prompts: the expensive
model is called once, with the chosen prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


# ----------------------------------------------------------------------------- embeddings
@torch.no_grad()
def mean_pooled(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 32) -> Tensor:
    """(N, H) float32: the mean over its tokens of each text's last hidden states under `model`
    (a causal LM), texts encoded without special tokens and right-padded in batches. A text's
    embedding does not depend on the batch it is in (up to float error)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for s in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] or [pad] for t in texts[s:s + batch_size]]
        width = max(len(i) for i in ids)
        x = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for b, row in enumerate(ids):
            x[b, :len(row)] = torch.tensor(row)
            mask[b, :len(row)] = 1
        hidden = model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()  # (B, T, H)
        m = mask[..., None].float()
        out.append((hidden * m).sum(1) / m.sum(1))
    return torch.cat(out)


# ----------------------------------------------------------------------------- features
def pca_basis(x: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """(mean (H,), basis (H, d), scale (d,)) of the top-d principal components of the rows of x,
    d = min(dim, N - 1, H); each component's sign is fixed (largest-magnitude loading positive)
    so the basis is a deterministic function of x; scale = the components' standard deviations."""
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    d = max(1, min(dim, x.shape[0] - 1, x.shape[1]))
    basis = vh[:d].T  # (H, d)
    sign = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))  # (1, d)
    basis = basis * torch.where(sign == 0, torch.ones_like(sign), sign)
    scale = (s[:d] / max(x.shape[0] - 1, 1) ** 0.5).clamp(min=1e-8)
    return mean, basis, scale


@dataclass
class Featurizer:
    """Maps (query embedding, prompt embedding) pairs to the RM's input: the whitened top
    principal components of each, concatenated. Fit on the logged queries and the K prompts."""

    q_dim: int = 32
    p_dim: int = 8
    q_pca: tuple[Tensor, Tensor, Tensor] | None = None
    p_pca: tuple[Tensor, Tensor, Tensor] | None = None

    def fit(self, q_emb: Tensor, p_emb: Tensor) -> "Featurizer":
        self.q_pca, self.p_pca = pca_basis(q_emb, self.q_dim), pca_basis(p_emb, self.p_dim)
        return self

    @staticmethod
    def _project(x: Tensor, pca: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        mean, basis, scale = pca
        return ((x.double() - mean) @ basis / scale).float()

    def __call__(self, q_emb: Tensor, p_emb: Tensor) -> Tensor:
        """(Nq, K, dq + dp) features of every (query, prompt) pair."""
        q, p = self._project(q_emb, self.q_pca), self._project(p_emb, self.p_pca)  # (Nq, dq), (K, dp)
        return torch.cat([q[:, None].expand(-1, p.shape[0], -1), p[None].expand(q.shape[0], -1, -1)], -1)


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class RMConfig:
    """How the reward model is fit (defaults: the settings of docs/reproductions.md)."""

    q_dim: int = 32
    """Principal components kept of the query embeddings."""
    p_dim: int = 8
    """Principal components kept of the prompt embeddings (at most K - 1 are informative)."""
    hidden: tuple[int, ...] = (32, 128)
    """MLP widths tried (0 = logistic regression on the features)."""
    weight_decay: tuple[float, ...] = (1e-3, 1e-1)
    """AdamW weight decays tried."""
    lr: float = 3e-3
    max_epochs: int = 400
    """Full-batch epochs at most; early stopping on the validation loss picks the number."""
    patience: int = 40
    val_fraction: float = 0.2
    """Share of the logged queries (with all their prompts) held out to choose width, decay, epochs."""
    ensemble: int = 5
    """Seeds refit on all the logged data; their probabilities are averaged."""
    seed: int = 0


def _net(d_in: int, hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if hidden == 0:
        return nn.Linear(d_in, 1)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, 1))


def _bce(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1), y)


def train_net(x: Tensor, y: Tensor, hidden: int, weight_decay: float, cfg: RMConfig, seed: int, epochs: int | None = None,
              x_val: Tensor | None = None, y_val: Tensor | None = None) -> tuple[nn.Module, int, float]:
    """Fit one net with full-batch AdamW. With validation data: early stopping, returns the best
    epoch's weights, that epoch (1-based) and its validation loss; else trains `epochs` epochs."""
    net = _net(x.shape[-1], hidden, seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=weight_decay)
    best = (float("inf"), 0, None)
    for epoch in range(1, (epochs or cfg.max_epochs) + 1):
        opt.zero_grad()
        _bce(net, x, y).backward()
        opt.step()
        if x_val is not None:
            with torch.no_grad():
                val = float(_bce(net, x_val, y_val))
            if val < best[0] - 1e-6:
                best = (val, epoch, {k: v.clone() for k, v in net.state_dict().items()})
            elif epoch - best[1] >= cfg.patience:
                break
    if x_val is not None and best[2] is not None:
        net.load_state_dict(best[2])
        return net, best[1], best[0]
    return net, epochs or cfg.max_epochs, float("nan")


@dataclass
class RewardModel:
    """The fitted RM: `probs(q_emb)` gives (Nq, K) P(correct) for the K prompts it was fit with."""

    featurizer: Featurizer
    p_emb: Tensor
    nets: list[nn.Module]
    choice: dict[str, Any] = field(default_factory=dict)
    """The chosen width, weight decay and epochs, and each candidate's validation loss."""

    @torch.no_grad()
    def probs(self, q_emb: Tensor) -> Tensor:
        x = self.featurizer(q_emb, self.p_emb)  # (Nq, K, d)
        return torch.stack([torch.sigmoid(n(x).squeeze(-1)) for n in self.nets]).mean(0)


def fit_reward_model(q_emb: Tensor, p_emb: Tensor, correct: Tensor, cfg: RMConfig = RMConfig()) -> RewardModel:
    """Fit the RM on logged labels `correct` (Nq, K) of queries `q_emb` (Nq, H) and prompts
    `p_emb` (K, H). Deterministic for fixed inputs and cfg.seed."""
    nq = q_emb.shape[0]
    if nq < 5:
        raise ValueError(f"the reward model needs at least 5 logged queries, got {nq}")
    feat = Featurizer(cfg.q_dim, cfg.p_dim).fit(q_emb, p_emb)
    x, y = feat(q_emb, p_emb), correct.float()  # (Nq, K, d), (Nq, K)
    perm = torch.randperm(nq, generator=torch.Generator().manual_seed(cfg.seed))
    n_val = max(1, round(cfg.val_fraction * nq))
    val, fit = perm[:n_val], perm[n_val:]
    flat = lambda t, idx: t[idx].reshape(-1, *t.shape[2:])  # noqa: E731 (rows of the chosen queries, all prompts)
    candidates = {}
    for hidden in cfg.hidden:
        for wd in cfg.weight_decay:
            _, epoch, loss = train_net(flat(x, fit), flat(y, fit), hidden, wd, cfg, cfg.seed,
                                       x_val=flat(x, val), y_val=flat(y, val))
            candidates[(hidden, wd)] = (loss, epoch)
    (hidden, wd), (loss, epochs) = min(candidates.items(), key=lambda kv: (kv[1][0], kv[0]))
    nets = [train_net(flat(x, perm), flat(y, perm), hidden, wd, cfg, cfg.seed + 1 + i, epochs=epochs)[0]
            for i in range(cfg.ensemble)]
    choice = {"hidden": hidden, "weight_decay": wd, "epochs": epochs, "val_bce": round(loss, 4),
              "candidates": {f"hidden={h},wd={w}": round(v[0], 4) for (h, w), v in candidates.items()}}
    return RewardModel(feat, p_emb, nets, choice)
