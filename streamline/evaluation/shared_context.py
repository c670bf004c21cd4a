"""Multiple-choice scoring that computes each shared context once, inside the harness's own loglikelihood run.

lm-eval 0.4.13 scores every (context, continuation) request as its own input row: `HFLM._loglikelihood_tokens`
(`lm_eval/models/huggingface.py` lines 1329-1572) feeds (context + continuation)[-(max_length+1):][:-1], sorted by
length and right-padded with zeros (`pad_and_concat`), and sums the log-softmax of the continuation positions
(`softmax_dtype`), with `is_greedy` = every continuation token is the argmax. A HellaSwag example thus runs its
~80-token context four times for ~30 tokens of ending each.

`SharedContextLM` overrides `_loglikelihood_tokens` and computes the same numbers from one pass over each shared
prefix. It builds exactly the harness's input rows (same tokenization, same left truncation, the empty-context
prefix token already in the rows since `LM.loglikelihood` adds it before this call), groups rows that share a long
token prefix (`group_rows`: the choices of one document share their context; winogrande's partial scoring shares
the sentence up to the blank), and lays each group out as ONE sequence, prefix + remainder_1 + ... + remainder_k,
with position ids that restart at the prefix length for each remainder and a 4D attention mask under which each
remainder sees the prefix and itself only (`pack`). Groups are placed one after another on lines of the longest
group's length (`fill_lines`, first fit decreasing; positions restart and the mask is block-diagonal per group),
so a batch carries little padding. Each row's logits are then those of its own forward; the
continuation scores use the harness's expression on them (log_softmax in `softmax_dtype`, sum, argmax), and each
row's input-token log-probabilities go into the store `choice_nll.capture_input_logprobs` returns, keyed by the
row, as the harness path records them: the PPL scores (`acc_ppl`) take the context NLL from that one store
whichever path filled it.

The layout is exact when the model's attention takes the given 4D mask and its positions from `position_ids` on
every layer. Where that is not known to hold, a call takes the harness's own path (`super()._loglikelihood_tokens`)
and logs why (`shared_layout_problem`): a non-causal backend, batch_size auto, an attention implementation other
than sdpa/eager (flash attention ignores a 4D mask), a sliding/chunked attention window shorter than the longest
row (a 4D mask replaces the window), or no rows sharing a prefix. The first call with something to check runs a
probe (`_probe_verdict`, kept for the model): one line of two groups scored both ways (the harness's row layout
through `_model_call`, and the packed one); per-token log-probabilities differing by more than `PROBE_TOLERANCE` for the
model's dtype (e.g. a model that derives positions from the mask, as ALiBi models do, or builds its own causal
mask), or a packed forward that raises, send every call to the harness path. Which path each call took, and why,
is appended to `lm.scoring_paths` (`evaluate.evaluate_tasks` copies it into the raw results as `scorer`).

Numbers: in float32 a choice's log-likelihood differs from the harness's by rounding only (other matmul shapes;
<= 1e-4, tests/test_shared_context.py). In bfloat16 the harness sums the continuation's log-probs in bfloat16
(`softmax_dtype` unset), so its scores are themselves rounded to a bfloat16 step (0.125-0.5 at magnitudes 30-100);
layout noise moves a score by such a step now and then, so a near-tie can go the other way (benchmarks/RESULTS.md,
"Shared-context multiple-choice scoring").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

log = logging.getLogger(__name__)

SCORERS = ("shared", "harness")  # schema `evaluation.scorer`
MAX_GROUP_ROWS = 16  # rows packed behind one prefix at most (a forward holds at least one group)
MIN_SHARED_FRACTION = 0.25  # a row joins a group only if the shared prefix is at least this part of the row
# Largest mean absolute difference per token between the packed and the harness's row layout's log-probs that the
# probe accepts. Measured on SmolLM2-135M (4 default tasks): layout noise (other matmul shapes) is ~1e-6 in float32
# and at most 0.04 (mean over a long group; 0.1 over a 2-token one) in bfloat16; a wrong position or mask gives
# 0.2-1.9.
PROBE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.1}
HARNESS_PATH_ATTENTION = ("sdpa", "eager")
NOTHING_SHARED = "no rows share a prefix"


@dataclass(frozen=True)
class Row:
    """One request as the harness feeds it: `tokens` = (context + continuation)[-(max_length+1):][:-1]; the row's
    targets are tokens[1:] + (last,); the continuation is scored at the row's last len(continuation) positions."""

    tokens: tuple[int, ...]
    last: int
    continuation: tuple[int, ...]

    @property
    def targets(self) -> list[int]:
        return [*self.tokens[1:], self.last]


def harness_row(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Row:
    """The input row `HFLM._loglikelihood_tokens` builds for one request (causal backend, left truncation)."""
    whole = (list(context) + list(continuation))[-(max_length + 1) :]
    return Row(tuple(whole[:-1]), whole[-1], tuple(continuation))


Group = tuple[int, list[int]]  # (shared prefix length, row indices)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def group_rows(rows: Sequence[Row]) -> list[Group]:
    """(prefix length, row indices) groups covering every row once.

    Rows are sorted by their tokens, so rows sharing a prefix are neighbours; a row joins the current group when
    the prefix it shares with the group is at least MIN_SHARED_FRACTION of the row and the group's saving (shared
    tokens computed once instead of k times) does not drop: k * p_new >= (k - 1) * p (k rows so far, prefix p).
    A group has at most MAX_GROUP_ROWS rows. A single row's prefix is the whole row (nothing to share)."""
    order = sorted(range(len(rows)), key=lambda i: rows[i].tokens)
    groups: list[Group] = []
    for i in order:
        tokens = rows[i].tokens
        if groups:
            prefix, members = groups[-1]
            shared = min(prefix, common_prefix(rows[members[0]].tokens, tokens))
            k = len(members)
            if (
                k < MAX_GROUP_ROWS
                and shared >= 1
                and shared >= MIN_SHARED_FRACTION * len(tokens)
                and k * shared >= (k - 1) * prefix
            ):
                groups[-1] = (shared, [*members, i])
                continue
        groups.append((len(tokens), [i]))
    return groups


def packed_length(rows: Sequence[Row], group: Group) -> int:
    prefix, members = group
    return prefix + sum(len(rows[i].tokens) - prefix for i in members)


def fill_lines(rows: Sequence[Row], groups: Sequence[Group]) -> list[list[Group]]:
    """Groups placed into lines (one packed sequence each) of at most the longest group's packed length, first fit
    in decreasing length, so a batch of lines carries little padding (one group per line pads every line to the
    batch's longest group: 7-17% more positions on the default tasks at 100 examples, 0-2% with the lines).
    Lines come longest first."""
    lengths = {id(g): packed_length(rows, g) for g in groups}
    width = max(lengths.values())
    lines: list[list[Group]] = []
    fills: list[int] = []
    for group in sorted(groups, key=lambda g: -lengths[id(g)]):
        n = lengths[id(group)]
        for j, fill in enumerate(fills):
            if fill + n <= width:
                lines[j].append(group)
                fills[j] += n
                break
        else:
            lines.append([group])
            fills.append(n)
    order = sorted(range(len(lines)), key=lambda j: -fills[j])
    return [lines[j] for j in order]


@dataclass
class Packed:
    """A batch of packed lines: ids/positions [B, T], the mask [B, 1, T, T] (bool or additive), and per line, per
    row in the line (its groups' members in order) the packed index of each of the row's positions."""

    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    where: list[list[list[int]]]


def pack(rows: Sequence[Row], lines: Sequence[Sequence[Group]], dtype: torch.dtype) -> Packed:
    """Each line as one sequence: its groups one after the other, each group prefix + remainder_1 + ... +
    remainder_k; lines right-padded to the batch's longest.

    Position ids restart for each group: the prefix 0..p-1, each remainder p..n_i-1 (its row's own positions).
    Mask (bool: True = attend, or additive in a floating `dtype`): a token sees only its own group; there a prefix
    token sees the prefix tokens before it, a remainder token the whole prefix and its own remainder up to itself;
    a padding token only itself (so no attention row is empty)."""
    seqs, poss, grps, segs, where = [], [], [], [], []
    for line in lines:
        tokens, positions, groups, segments, maps = [], [], [], [], []
        for g, (prefix, members) in enumerate(line):
            base = len(tokens)
            tokens += rows[members[0]].tokens[:prefix]
            positions += range(prefix)
            segments += [0] * prefix
            for j, i in enumerate(members, start=1):
                rest = rows[i].tokens[prefix:]
                start = len(tokens)
                tokens += rest
                positions += range(prefix, prefix + len(rest))
                segments += [j] * len(rest)
                maps.append([*range(base, base + prefix), *range(start, start + len(rest))])
            groups += [g] * (len(tokens) - base)
        seqs.append(tokens)
        poss.append(positions)
        grps.append(groups)
        segs.append(segments)
        where.append(maps)
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, T]
    positions = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, T]
    group = torch.full((len(seqs), width), -1, dtype=torch.long)  # [B, T]; -1 = padding
    segment = torch.full((len(seqs), width), -1, dtype=torch.long)  # [B, T]; 0 = a group's prefix
    for b, (s, p, g, m) in enumerate(zip(seqs, poss, grps, segs)):
        ids[b, : len(s)] = torch.tensor(s)
        positions[b, : len(s)] = torch.tensor(p)
        group[b, : len(s)] = torch.tensor(g)
        segment[b, : len(s)] = torch.tensor(m)
    grp_q, grp_k = group[:, :, None], group[:, None, :]  # [B, T, 1], [B, 1, T]
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]  # [B, T, 1], [B, 1, T]
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # [T, T]
    allowed = causal & (grp_q >= 0) & (grp_k == grp_q) & ((seg_k == 0) | (seg_k == seg_q))  # [B, T, T]
    allowed |= torch.eye(width, dtype=torch.bool)
    if dtype == torch.bool:
        return Packed(ids, positions, allowed[:, None], where)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return Packed(ids, positions, mask, where)  # mask: [B, 1, T, T]


def attention_window(config: Any) -> int | None:
    """The shortest sliding/chunked attention span the model's config declares (None: every layer sees all)."""
    spans = []
    for cfg in (config, getattr(config, "text_config", None)):
        for key in ("sliding_window", "attention_chunk_size"):
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                spans.append(value)
    return min(spans) if spans else None


def shared_layout_problem(lm: HFLM, rows: Sequence[Row], batch_size: Any) -> str | None:
    """Why the packed layout may not reproduce the harness's forward for this model and these rows (None: it
    does, subject to the probe)."""
    if lm.backend != "causal":
        return f"backend {lm.backend!r} is not causal"
    if not isinstance(batch_size, int) or batch_size < 1:
        return f"batch size {batch_size!r} (auto) is not a number of rows"
    config = lm.model.config
    attention = getattr(config, "_attn_implementation", None)
    if attention not in HARNESS_PATH_ATTENTION:
        return f"attention implementation {attention!r} may not honour a 4D mask (shared needs sdpa or eager)"
    window = attention_window(config)
    longest = max(len(r.tokens) for r in rows)
    if window is not None and longest > window:
        return f"a row of {longest} tokens is longer than the model's attention window of {window} tokens"
    return None


class SharedContextLM(HFLM):
    """An HFLM whose loglikelihood computes each shared context once (module docstring); otherwise the harness's."""

    # choice_nll.capture_input_logprobs sets this to its recorder: (row tokens, [n] float32 log-probs) -> store
    record_input: Callable[[Sequence[int], torch.Tensor], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probed = False  # the layout probe ran (on this model; `_probe_verdict`)
        self.probe_problem: str | None = None
        self.scoring_paths: list[dict[str, Any]] = []  # per loglikelihood call: the path it took and why

    def _mask_dtype(self) -> torch.dtype:
        """bool for sdpa (True = attend); additive in the model's dtype for eager, which adds the mask."""
        return torch.bool if self.model.config._attn_implementation == "sdpa" else self.model.dtype

    def _model_logits(self, packed: Packed) -> torch.Tensor:
        """Logits of a packed batch, [B, T, V], under the autocast `HFLM._model_call` uses."""
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(
                input_ids=packed.ids.to(self.device),
                attention_mask=packed.mask.to(self.device),
                position_ids=packed.positions.to(self.device),
            ).logits

    @staticmethod
    def _token_logprobs(logits: torch.Tensor, lse: torch.Tensor, where: list[int], row: Row) -> torch.Tensor:
        """float32 log p(target_t | row[..t]) at each of the row's positions, [n], from one sequence's logits
        [T, V] and their float32 logsumexp [T]."""
        index = torch.tensor(where, device=logits.device)
        targets = torch.tensor(row.targets, device=logits.device)
        return (logits[index, targets].float() - lse[index]).cpu()

    def _answer(self, logits: torch.Tensor, where: list[int], row: Row) -> tuple[float, bool]:
        """(summed continuation log-likelihood, is_greedy): the harness's own expression on the row's logits."""
        n = len(row.continuation)
        index = torch.tensor(where[-n:], device=logits.device)
        logprobs = F.log_softmax(logits[index], dim=-1, dtype=self.softmax_dtype)[None]  # [1, n, V]
        cont = torch.tensor(row.continuation, dtype=torch.long, device=logits.device)[None]  # [1, n]
        greedy = bool((logprobs.argmax(dim=-1) == cont).all())
        return float(torch.gather(logprobs, 2, cont[..., None]).squeeze(-1).sum()), greedy

    def _row_layout_logprobs(self, rows: Sequence[Row], batch_size: int) -> list[torch.Tensor]:
        """float32 per-token log-probs of `rows` from the harness's own layout (right-padded rows, `_model_call`),
        `batch_size` rows a forward."""
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r.tokens) for r in chunk)
            inps = torch.zeros(len(chunk), width, dtype=torch.long, device=self.device)  # [b, T]
            for b, r in enumerate(chunk):
                inps[b, : len(r.tokens)] = torch.tensor(r.tokens)
            logits = self._model_call(inps)  # [b, T, V]
            lse = torch.logsumexp(logits.float(), dim=-1)  # [b, T]
            out += [self._token_logprobs(logits[b], lse[b], list(range(len(r.tokens))), r) for b, r in enumerate(chunk)]
        return out

    def _probe_verdict(self, rows: Sequence[Row], groups: Sequence[Group], batch_size: int) -> str | None:
        """The probe's verdict on this model: probed at the first call that has something to probe, then kept
        (it is a property of the model's attention, not of the rows; the rows' own limits are checked per call)."""
        if self.probed:
            return self.probe_problem
        later = [sum(len(rows[i].tokens) - prefix for i in members[1:]) for prefix, members in groups]
        first = later.index(max(later))
        line = [groups[first], *[g for j, g in enumerate(groups) if j != first][:1]]
        self.probe_problem = self._probe(rows, line, batch_size)
        self.probed = True
        return self.probe_problem

    def _probe(self, rows: Sequence[Row], line: Sequence[Group], batch_size: int) -> str | None:
        """Score one line of groups both ways; why the packed layout is not the harness's (None: it is).

        Only the first row of a line's first group is laid out as a plain sequence; the remainders after it and
        every row of a later group are shifted in the packed sequence, next to other rows. So the probe takes the
        group with the most such tokens (where a wrong position or mask shows most; `_probe_verdict`), followed by
        another group on the same line, and compares the mean absolute difference of the per-token log-probs over
        the shifted tokens, and over the first row, with PROBE_TOLERANCE."""
        line_rows = [rows[i] for _, members in line for i in members]
        reference = self._row_layout_logprobs(line_rows, batch_size)
        try:
            packed = pack(rows, [line], self._mask_dtype())
            logits = self._model_logits(packed)[0]  # [T, V]
            lse = torch.logsumexp(logits.float(), dim=-1)  # [T]
        except Exception as exc:  # noqa: BLE001 - any failure of the packed forward means: use the harness path
            return f"the packed forward failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        diffs = [
            (self._token_logprobs(logits, lse, w, r) - ref).abs()
            for w, r, ref in zip(packed.where[0], line_rows, reference)
        ]  # per row of the line: [n_i]
        prefix, members = line[0]
        first = float(diffs[0].mean())
        shifted = [d for d in [d[prefix:] for d in diffs[1 : len(members)]] + diffs[len(members) :] if d.numel()]
        rest = float(torch.cat(shifted).mean()) if shifted else 0.0
        tolerance = PROBE_TOLERANCE.get(self.model.dtype, max(PROBE_TOLERANCE.values()))
        if not (first <= tolerance and rest <= tolerance):
            return (
                f"the packed layout's log-probs differ from the harness's by {max(first, rest):.3g} per token on "
                f"average (> {tolerance} for {self.model.dtype})"
            )
        return None

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        if not requests:
            return []
        for _, context_enc, continuation_enc in requests:  # the harness's own checks
            assert len(context_enc) > 0 and len(continuation_enc) > 0
            assert len(continuation_enc) <= self.max_length
        rows = [harness_row(c, k, self.max_length) for _, c, k in requests]
        batch_size = override_bs if override_bs is not None else self.batch_size
        problem = shared_layout_problem(self, rows, batch_size)
        groups = group_rows(rows) if problem is None else []
        shared = [g for g in groups if len(g[1]) > 1]
        if problem is None and not shared:
            problem = NOTHING_SHARED
        if problem is None:
            problem = self._probe_verdict(rows, groups, batch_size)
        if problem is not None:
            level = logging.INFO if problem == NOTHING_SHARED else logging.WARNING
            log.log(level, "shared-context scoring: harness path for %d requests: %s", len(requests), problem)
            self.scoring_paths.append({"path": "harness", "requests": len(requests), "reason": problem})
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        answers = self._score_groups(rows, groups, batch_size)
        for (request, _, _), answer in zip(requests, answers):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        self.scoring_paths.append(
            {
                "path": "shared",
                "requests": len(requests),
                "groups": len(groups),
                "tokens": sum(packed_length(rows, g) for g in groups),
                "harness_tokens": sum(len(r.tokens) for r in rows),
            }
        )
        return answers

    def _score_groups(self, rows: Sequence[Row], groups: list[Group], batch_size: int) -> list[tuple[float, bool]]:
        """Answers for every row, in the rows' order; records each row's input-token log-probs when asked to.
        Groups are placed into lines (`fill_lines`); a forward holds lines of at most batch_size x (longest row)
        positions in all, padding included (the harness's largest batch), at least one line; lines go longest
        first."""
        budget = batch_size * max(len(r.tokens) for r in rows)
        lines = fill_lines(rows, groups)
        answers: list[tuple[float, bool] | None] = [None] * len(rows)
        start = 0
        while start < len(lines):
            width = sum(packed_length(rows, g) for g in lines[start])
            stop = start + max(1, budget // width)
            batch = lines[start:stop]
            packed = pack(rows, batch, self._mask_dtype())
            logits = self._model_logits(packed)  # [B, T, V]
            for b, line in enumerate(batch):
                if self.record_input is not None:  # float32, once per packed position: [T_b]
                    lse = torch.logsumexp(logits[b, : sum(packed_length(rows, g) for g in line)].float(), dim=-1)
                members = [i for _, group_members in line for i in group_members]
                for i, where in zip(members, packed.where[b]):
                    answers[i] = self._answer(logits[b], where, rows[i])
                    if self.record_input is not None:
                        self.record_input(rows[i].tokens, self._token_logprobs(logits[b], lse, where, rows[i]))
            start = stop
        return answers  # type: ignore[return-value]
