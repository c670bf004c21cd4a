"""Compressed/dense prefill throughput next to the ideal ratio dense FLOPs / compressed FLOPs (target >= 0.95).

FLOPs per prefill token = 2 x (decoder-layer parameters + LM-head parameters) + causal attention
2 x 2 x (T/2) x heads x head_dim per layer. Variants are built in memory from the embedded default:
`none` drops a 10-layer window, `swiglu` keeps one (zero-attention) layer in its place.
"""

from __future__ import annotations

from _common import DTYPE, dense_checkpoint

from streamline.acquisition.families import decoder_layers
from streamline.acquisition.models import load_model
from streamline.evaluation.speed import throughput
from streamline.pruning.surgery import keep_layers

PROMPT, REPEATS, START, WINDOW = 512, 5, 10, 10


def prefill_flops(model, tokens: int) -> float:
    cfg = model.config
    layers = sum(sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model))
    head = cfg.vocab_size * cfg.hidden_size
    attention = len(decoder_layers(model)) * 2 * 2 * (tokens / 2) * cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    return 2 * (layers + head) + attention


def measure(model) -> float:
    return throughput(model, prompt_tokens=PROMPT, decode_tokens=1, repeats=REPEATS)["prefill_tok_s"]


def main() -> None:
    path = dense_checkpoint()
    dense, _ = load_model(path, DTYPE)
    dense_speed, dense_flops = measure(dense), prefill_flops(dense, PROMPT)
    for kind, keep_first in (("none", False), ("swiglu", True)):
        model, _ = load_model(path, DTYPE)
        window = set(range(START + (1 if keep_first else 0), START + WINDOW))
        keep_layers(model, [i for i in range(len(decoder_layers(model))) if i not in window])
        ratio = measure(model) / dense_speed
        ideal = dense_flops / prefill_flops(model, PROMPT)
        print(
            f"{kind:6s}: prefill speed-up {ratio:.3f}, ideal {ideal:.3f}, "
            f"achieved/ideal = {ratio / ideal:.3f}  (target >= 0.95)"
        )


if __name__ == "__main__":
    main()
