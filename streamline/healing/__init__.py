"""Healing (step 3): what takes the removed window's place, and how it is trained.

- kinds.py: the healing-kind registry (none, linear, ffn, swiglu, layer, LoRA, lm-loss, the 2025 peers)
- modules.py: the modules a kind can put in the window (builder, parameter count, how the checkpoint stores it)
- job.py, heal.py: a healing job as one value, dispatched by its kind's `trains` to one function
- replace.py: modules trained with MSE on cached (input, output) states of the window
- pair_cache.py: those states, cached once and shared by the replacements of one window
- training.py: the one training loop (AdamW, schedule, accumulation, clipping, best validation kept)
- train_config.py: its settings (TrainConfig), a plain value the registries read without torch
- recipes.py: `training.recipe`, this project's loop or each method's official one (docs/deviations.md)
- lm.py: healings trained with the language-modelling loss (LoRA, lm-loss, last layers)
- fit.py, replaceme.py, linear_patch.py: closed-form fits (ReplaceMe, LinearPatch)
- last_layers.py: last-layer fine-tuning of reverse-order pruning (Lu et al.; the order: pruning/criteria.py)
"""
