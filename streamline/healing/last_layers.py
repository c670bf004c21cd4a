"""Reverse-order pruning with partial-layer fine-tuning (Lu et al. 2025, "Reassessing Layer Pruning in LLMs").

Official code: github.com/yaolu-zjut/Navigation-LLM-layer-pruning @ e1f938af (2025-02-16).
- Reverse order (the registered criterion `reverse`, pruning/criteria.py reverse_order), prune_llm.py:194-197 (`--pr_method tail`,
  README.md:28-31): `remained = range(remain_num)`, i.e. the LAST layers go, the final decoder layer included; the
  new model copies the embeddings, final norm and LM head unchanged (prune_llm.py:220-228).
- Partial-layer fine-tuning, partial_fine-tuning.py:80-107: every parameter frozen, then `model.model.norm` and
  `lm_head` trainable, plus `model.model.layers[-1..-k]` for `--partial_layer_name lastk` (last1/last2/last3;
  `norm_lmhead` trains the norm and head only). README.md:39-41 reproduces the paper with `last3`, so k = 3 here.
- Training, partial_fine-tuning.py:222-258 and 284-289: next-token loss with transformers.Trainer, AdamW, lr 1e-5,
  batch 64 (micro 4), 2 epochs, 100 warm-up steps, linear decay, max_grad_norm 1.0, fp16, best eval loss kept,
  on Alpaca-cleaned prompts (prompt tokens masked unless --train_on_inputs), cutoff 256 tokens.

Its official training recipe is `recipes.OFFICIAL["partial-fine-tuning"]` (`training.recipe: official`); the
deviations (data, layer count, tied embeddings, evaluation cadence): docs/deviations.md, "Reverse-order pruning".
"""

from __future__ import annotations

from transformers import PreTrainedModel

from streamline.acquisition.families import decoder_layers, final_norm

LAST_LAYERS_DEFAULT = 3  # README.md:41 `--partial_layer_name last3`


def unfreeze_last_layers(model: PreTrainedModel, k: int = LAST_LAYERS_DEFAULT) -> list[str]:
    """Freeze everything except the last `k` decoder layers, the final norm and the LM head; return trainable names.

    partial_fine-tuning.py:80-104. Names are those of model.named_parameters() (a tied head appears once).
    """
    layers = decoder_layers(model)
    if not 0 <= k <= len(layers):
        raise ValueError(f"last_layers k={k} is outside 0..{len(layers)} (the pruned model's layer count)")
    for param in model.parameters():
        param.requires_grad_(False)
    modules = [final_norm(model), model.get_output_embeddings(), *list(layers)[len(layers) - k :]]
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(True)
    return [name for name, param in model.named_parameters() if param.requires_grad]
