"""The workflow's side of the package: one function per rule (steps.py for the steps that load a model,
record_steps.py for those that load none and import no torch), the job wrapper that turns a failure into one line
(runstep.py), the config schema (config_schema.py) and checks (checks.py), user plugins (plugins.py), and what
rules/common.smk binds to the config: the variants and settings keys (variants.py), the files each job reads
(inputs.py) and the cluster resources of a job (resources.py).
"""
