"""The mirror tasks of the paper's seven lm-eval tasks read the mirror's files with the harness's prompts."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import MIRROR

from streamline.evaluation.harness import task_manager

# task -> (data file, rows per its SOURCE.md)
NEW_TASKS = {
    "arc_challenge_mirror": ("arc_challenge/arc_challenge.jsonl", 1172),
    "openbookqa_mirror": ("openbookqa/openbook_qa.jsonl", 500),
    "rte_mirror": ("rte/rte_glue_validation.jsonl", 277),
}


@pytest.fixture(scope="module")
def tasks():
    return task_manager([], MIRROR).load(list(NEW_TASKS))["tasks"]


@pytest.mark.parametrize("name", list(NEW_TASKS))
def test_mirror_task_reads_every_row_with_its_gold(tasks, name):
    data_file, rows = NEW_TASKS[name]
    task = tasks[name]
    docs = list(task.test_docs())
    raw = [json.loads(line) for line in (MIRROR / data_file).read_text().splitlines() if line.strip()]
    assert len(docs) == len(raw) == rows
    first = raw[0]
    if name == "rte_mirror":  # harness `rte`: GLUE text, " True" = entailment (label 0)
        assert task.doc_to_text(docs[0]) == f"{first['sentence1']}\nQuestion: {first['sentence2']} True or False?\nAnswer:"
        assert task.doc_to_choice(docs[0]) == ["True", "False"]
        assert Counter(task.doc_to_target(d) for d in docs) == {0: 146, 1: 131}  # SOURCE.md
    else:
        suffix = "\nAnswer:" if name == "arc_challenge_mirror" else ""
        assert task.doc_to_text(docs[0]) == first["query"] + suffix
        assert task.doc_to_choice(docs[0]) == first["choices"]
        assert [task.doc_to_target(d) for d in docs] == [r["gold"] for r in raw]
