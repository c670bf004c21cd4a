"""Snakemake's parse of the workflow and the jobs that load no model import no model stack (issue 23.7).

torch + transformers + the healing stack take ~4 s to import on a 2-core CPU: paid once per Snakemake invocation
(every dry run) and once per job, they were most of a light job's time and much of the test suite's. The
registries the Snakefile reads (criteria, healing kinds, window modules, recipes), the checkpoint headers and the
record steps (streamline/workflow/record_steps.py) are plain Python, pandas and safetensors' numpy reader.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_STACK = ("torch", "transformers", "lm_eval", "peft")


def loaded_after(statements: list[str]) -> list[str]:
    """The MODEL_STACK packages a fresh interpreter holds after running `statements` (import lines)."""
    code = "\n".join([*statements, "import sys, json", f"print(json.dumps([m for m in {MODEL_STACK!r} if m in sys.modules]))"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def script_imports(path: Path) -> list[str]:
    """The import statements of a workflow script (it runs under Snakemake, so only they can run here)."""
    tree = ast.parse(path.read_text())
    return [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]


def workflow_imports() -> list[str]:
    """The project imports of the Snakefile and rules/*.smk (Snakemake syntax, so read line by line)."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
    pattern = re.compile(r"^(from streamline\S* import .+|import streamline\S*)$")
    return [line.strip() for f in files for line in f.read_text().splitlines() if pattern.match(line.strip())]


def record_scripts() -> list[Path]:
    return sorted(p for p in (ROOT / "workflow_scripts").glob("*.py") if "record_steps" in p.read_text())


def test_the_workflow_parse_imports_no_model_stack():
    statements = workflow_imports()
    assert any("HEALING_KINDS" in s for s in statements) and any("CRITERIA" in s for s in statements)
    assert loaded_after(statements) == []


@pytest.mark.parametrize("script", record_scripts(), ids=lambda p: p.stem)
def test_a_job_that_loads_no_model_imports_no_model_stack(script):
    assert loaded_after(script_imports(script)) == []


def test_the_check_sees_a_model_job_import_torch():
    """The same check on a model job (replace) finds torch and transformers, so the two tests above can fail."""
    assert {"torch", "transformers"} <= set(loaded_after(script_imports(ROOT / "workflow_scripts/replace.py")))


def test_every_light_rule_runs_a_record_step():
    """The rules that load no model (prune, importance, stability, reporting, paper) all call record steps."""
    names = {p.stem for p in record_scripts()}
    assert {"prune", "importance", "stability", "aggregate", "paired", "tables", "plot", "plot_importance",
            "paper_item"} <= names
