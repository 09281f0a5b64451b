"""Pure loss functions of tensors. Each returns `(per_example_loss, metrics)` where metrics is a
dict of detached tensors; reductions over examples and the accumulation normalizer belong to the
training loop. Modules import only torch."""

from rlhflab.losses.reward import bradley_terry, safe_rlhf_cost_loss
from rlhflab.losses.sft import sft_loss

__all__ = ["sft_loss", "bradley_terry", "safe_rlhf_cost_loss"]
