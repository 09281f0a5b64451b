"""Model FLOPs of the benchmarked steps and the machine's measured matmul peak, for model FLOPs
utilization: MFU = model FLOPs of a step / step time / peak FLOP/s.

Convention (Chinchilla, Hoffmann et al. 2022, appendix F; PaLM, Chowdhery et al. 2022, appendix B):
a matmul with an (in x out) weight costs 2 * in * out FLOPs per token forward, the backward twice
that (gradients of the activations and of the weight), so forward + backward is 6 N per token for
the N weights a token goes through. Counted per sequence of T tokens, C of them scored:

    forward  = 2 * N_body * T  +  2 * V * d * C  +  4 * L * d_attn * T (T + 1) / 2
    training = 3 * forward                                   (full fine-tuning)
             = 4 * N_body * T + 6 * r * D_lora * T + 4 * V * d * C + 12 * L * d_attn * T (T + 1) / 2   (LoRA)

N_body: the weights of the decoder's matmuls (attention and MLP projections; embeddings are
lookups, norms are element-wise and left out); V * d: the LM head, applied only where a log-prob
is needed (the scored tokens: completions for SFT, DPO and GRPO; none for a reward model, whose
d x 1 head is negligible); d_attn = heads * head_dim: the width of QK^T and of the attention-
weighted values, 2 * d_attn FLOPs each per query and key. A causal model needs each token's
scores against the t tokens up to it, T (T + 1) / 2 per sequence (PaLM's 12 L H Q T per token
counts the full T x T square, twice this; the term is a few percent here either way).
LoRA: the frozen weights need no weight gradient (4 instead of 6 per weight and token), the
adapters (r * (in + out) per adapted matmul, D_lora = sum of in + out) cost 6 per weight and
token. Generation of n tokens after a P-token prompt: a forward of P + n - 1 tokens through the
decoder (the last sampled token is not fed back), the LM head on n positions, attention over
the cached keys.

These are model FLOPs: what the algorithm needs, the same number for every framework, whatever
it recomputes (gradient checkpointing), wastes (padding, an LM head on prompt positions) or
shares (a prompt prefilled once for its G samples), so MFU ratios are speed ratios.

Run as a script it measures the matmul peak in its own process:
    python bench/flops.py --peak OUT.json --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs formulas need from a causal LM's config."""

    layers: int
    d_model: int
    d_attn: int  # heads * head_dim
    vocab: int
    body: int  # weights of the decoder's matmuls, LM head excluded
    lora_dims: int  # sum of in + out over the decoder's matmuls (LoRA "all-linear")

    def forward(self, T: float, C: float, TT: float | None = None) -> float:
        """Forward FLOPs of one sequence of T tokens with C scored; TT = T (T + 1) / 2 when given
        as a mean over sequences (the mean of T^2 is not the square of the mean)."""
        tt = T * (T + 1) / 2 if TT is None else TT
        return 2 * self.body * T + 2 * self.vocab * self.d_model * C + 4 * self.layers * self.d_attn * tt

    def train(self, T: float, C: float, lora_r: int = 0, TT: float | None = None) -> float:
        """Forward + backward FLOPs of one sequence (see the module docstring)."""
        if not lora_r:
            return 3 * self.forward(T, C, TT)
        tt = T * (T + 1) / 2 if TT is None else TT
        return (4 * self.body * T + 6 * lora_r * self.lora_dims * T + 4 * self.vocab * self.d_model * C
                + 12 * self.layers * self.d_attn * tt)

    def generate(self, P: float, n: float) -> float:
        """FLOPs of sampling n tokens after a P-token prompt with a KV cache (one sequence)."""
        if n <= 0:
            return 0.0
        fed = P + n - 1
        return 2 * self.body * fed + 2 * self.vocab * self.d_model * n + 4 * self.layers * self.d_attn * fed * (fed + 1) / 2

    def as_dict(self) -> dict:
        return asdict(self)


def model_shape(path: str | Path) -> ModelShape:
    """The shape of the causal LM in `path`, counted on a meta-device copy (no weights read)."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(layers=text.num_hidden_layers, d_model=text.hidden_size, d_attn=heads * head_dim,
                      vocab=head.out_features, body=sum(m.weight.numel() for m in linears),
                      lora_dims=sum(m.in_features + m.out_features for m in linears))


def causal_pairs(lengths: list[int]) -> float:
    """Mean of T (T + 1) / 2 over sequences: the attention term's per-sequence count."""
    return sum(t * (t + 1) / 2 for t in lengths) / len(lengths)


# --------------------------------------------------------------------------- the machine's peak


def measure_peak(device: str, threads: int, sizes: tuple[int, ...], reps: int) -> dict:
    """Best FLOP/s of torch.matmul on square matrices: float32 on a CPU at `threads` threads (the
    benchmark's count), bfloat16 on a GPU; `reps` timed calls per size after one untimed call."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        best = float("inf")
        for rep in range(reps + 1):
            if device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            torch.matmul(a, b, out=c)
            if device != "cpu":
                torch.cuda.synchronize()
            if rep:
                best = min(best, time.perf_counter() - t)
        by_size[str(n)] = 2 * n**3 / best
        del a, b, c
    best_n = max(by_size, key=by_size.get)
    out = {"flops_per_s": by_size[best_n], "best_size": int(best_n), "by_size": by_size, "reps": reps,
           "dtype": str(dtype).removeprefix("torch."), "device": device, "threads": torch.get_num_threads()}
    if device != "cpu":
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Measure the matmul peak (writes JSON).")
    ap.add_argument("--peak", required=True, help="output JSON")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    sizes = tuple(args.sizes or ((1024, 2048, 4096) if args.device == "cpu" else (4096, 8192)))
    Path(args.peak).write_text(json.dumps(measure_peak(args.device, args.threads, sizes, args.reps), indent=2))


if __name__ == "__main__":
    main()
