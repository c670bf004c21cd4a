import math

import pandas as pd
import pytest
import torch

from streamline.importance.hidden_states import residual_states
from streamline.importance.scores import accumulate
from streamline.importance.windows import best_window, window_table


def brute_force_scores(model, batches, metric: str, last_token_only: bool = False) -> dict[tuple[int, int], float]:
    """Independent path: output_hidden_states + explicit loops over windows and tokens.

    HF's last hidden state is post-norm, so the state leaving the last layer is rebuilt by a hook.
    """
    sums: dict[tuple[int, int], float] = {}
    count = 0
    num_layers = model.config.num_hidden_layers
    for batch in batches:
        captured = {}
        handle = model.model.layers[-1].register_forward_hook(
            lambda m, a, o, store=captured: store.setdefault("last", o)
        )
        with torch.no_grad():
            out = model(batch, output_hidden_states=True)
        handle.remove()
        hidden = list(out.hidden_states[:num_layers]) + [captured["last"]]
        positions = [batch.shape[1] - 1] if last_token_only else range(batch.shape[1])
        for n in range(1, num_layers):
            for start in range(num_layers - n + 1):
                a, b = hidden[start].double(), hidden[start + n].double()
                total = 0.0
                for s in range(batch.shape[0]):
                    for t in positions:
                        cos = float(torch.dot(a[s, t], b[s, t]) / (a[s, t].norm() * b[s, t].norm()))
                        cos = max(-1.0, min(1.0, cos))
                        total += cos if metric == "cosine" else math.acos(cos) / math.pi
                sums[(start, n)] = sums.get((start, n), 0.0) + total
        count += batch.shape[0] * len(positions)
    return {key: value / count for key, value in sums.items()}


@pytest.mark.parametrize("metric", ["cosine", "angular", "angular_last"])
def test_scores_match_brute_force(tiny_model, metric):
    torch.manual_seed(1)
    batches = [torch.randint(0, 200, (2, 7)), torch.randint(0, 200, (3, 7))]
    acc = accumulate(tiny_model, batches, progress=False)
    table = window_table(acc.mean(metric), metric)
    expected = brute_force_scores(tiny_model, batches, metric.removesuffix("_last"), metric.endswith("_last"))
    assert len(table) == len(expected) == sum(range(2, 7))  # n = 1..5 over 6 layers
    for row in table.itertuples():
        assert row.score == pytest.approx(expected[(row.start_layer, row.num_layers)], abs=1e-5)


def test_identity_layers_are_chosen_with_score_one(tiny_model):
    for idx in (2, 3):
        layer = tiny_model.model.layers[idx]
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    batches = [torch.randint(0, 200, (2, 9))]
    table = window_table(accumulate(tiny_model, batches, progress=False).mean("cosine"), "cosine")
    best = best_window(table, 2)
    assert (int(best.start_layer), int(best.num_layers)) == (2, 2)
    assert best.score == pytest.approx(1.0, abs=1e-6)
    angular = window_table(accumulate(tiny_model, batches, progress=False).mean("angular"), "angular")
    best_angular = best_window(angular, 2)
    assert int(best_angular.start_layer) == 2 and best_angular.score == pytest.approx(0.0, abs=1e-3)


def test_residual_states_stop_early_and_are_pre_norm(tiny_model):
    ids = torch.randint(0, 200, (1, 5))
    full = residual_states(tiny_model, ids)
    assert len(full) == tiny_model.config.num_hidden_layers + 1
    partial = residual_states(tiny_model, ids, upto=3)
    assert len(partial) == 4
    for a, b in zip(partial, full):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        normed = tiny_model.model(ids).last_hidden_state
    torch.testing.assert_close(tiny_model.model.norm(full[-1]), normed)
    assert not torch.allclose(full[-1], normed)


def test_memory_does_not_grow_with_samples(tiny_model):
    few = accumulate(tiny_model, [torch.randint(0, 200, (2, 6))], progress=False)
    many = accumulate(tiny_model, [torch.randint(0, 200, (2, 6)) for _ in range(5)], progress=False)
    assert few.cos_sum.shape == many.cos_sum.shape == (7, 7)
    assert many.tokens == 5 * few.tokens


def test_nan_states_are_an_error(tiny_model):
    tiny_model.model.layers[1].mlp.down_proj.weight.data.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"h_2 \(leaving layer 1\) holds NaN/Inf"):
        accumulate(tiny_model, [torch.randint(0, 200, (1, 4))], progress=False)


def test_table_shape():
    mean = torch.rand(5, 5)
    table = window_table(mean, "cosine")
    assert list(table.columns) == ["start_layer", "num_layers", "score", "metric"]
    assert set(table["num_layers"]) == {1, 2, 3}
    assert isinstance(table, pd.DataFrame)
