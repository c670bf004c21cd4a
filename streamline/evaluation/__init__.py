"""Evaluation (step 4): accuracy through lm-evaluation-harness, WikiText-2 perplexity, stability, size and speed.

- harness.py: tasks (the mirror tasks and the user's), the in-memory harness run, per-example records
- choice_nll.py: per-choice PPL scores (OpenCompass's PPL mode) and acc_ppl
- stability.py: the paper's confidence-weighted agreement with the dense model
- perplexity.py: fixed-window perplexity
- speed.py: parameters, checkpoint size, prefill and decode speed
"""
