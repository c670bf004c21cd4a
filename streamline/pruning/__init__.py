"""Pruning (step 2): criteria choose layers, plans turn a target into the layers removed, surgery edits the model.

- criteria.py: the criteria registry (window, order and search criteria, the baselines); no torch
- searches.py: the search criteria's forward passes (SLEB, Shortened LLaMA PPL, LaCo, ppl-window)
- plans.py: target sparsity or layer count -> plan.json (parameter arithmetic on the manifest)
- surgery.py: dropping, skipping and merging decoder layers
"""
