"""Acquisition: a model from its source (Hugging Face id, local folder, GGUF package) into a standard checkpoint
folder, and everything that knows a model family's layout.

- models.py: acquire (hf / local / gguf) -> checkpoint + manifest.json; load_model; dtype and device choice
- families.py: the per-family layout (decoder layers, norms, MLP block, attention output, rotary, LoRA names)
- checkpoint_files.py: a checkpoint folder read without a model (files, hash, stored parameters, damage); no torch
- checkpoint.py: the extra modules a compressed checkpoint stores beside stock weights (linear, ffn)
"""
