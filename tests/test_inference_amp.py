"""`--amp auto|true|false` for scoring and embeddings: bf16 only where a timed forward batch of the job shows it
BF16_MARGIN faster in every interleaved pair, jobs too small to repay the timing in float32 untimed, the choice
made once per CodonLM; `--amp` alone still means bf16."""

from __future__ import annotations

import contextlib
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from codonlm import CodonLM
from codonlm.cli import build_parser
from codonlm.config import ModelConfig
from codonlm.evaluate import sliding
from codonlm.model.tinygpt import TinyGPT
from codonlm.train import precision

CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]


def genes(n: int, codons: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"g{i}", "ATG" + "".join(rng.choice(CODONS) for _ in range(codons)) + "TAA") for i in range(n)]


@pytest.fixture
def lm() -> CodonLM:
    torch.manual_seed(0)
    return CodonLM(TinyGPT(ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)))


@pytest.fixture
def fake_timing(monkeypatch):
    """Replace the timed forward batch by a fake clock: seconds(dtype, k) is the k-th forward of dtype;
    returns the dtypes run, in order (the real job_precision, inference_precision and interleaved_timer)."""
    clock, runs = [0.0], []

    def install(seconds):
        def sample_forward(model, tokens, stride, max_tokens):
            def forward(autocast) -> int:
                dtype = "float32" if autocast is contextlib.nullcontext else "bfloat16"
                clock[0] += seconds(dtype, sum(d == dtype for d in runs))
                runs.append(dtype)
                return max_tokens
            return forward

        monkeypatch.setattr(sliding, "sample_forward", sample_forward)
        monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
        return runs

    return install


def test_a_small_job_runs_float32_untimed_and_equals_the_float32_scores(lm, fake_timing):
    runs = fake_timing(lambda dtype, k: pytest.fail("a small job was timed"))
    records = genes(4, 100)
    assert lm.inference_amp(records) is False and runs == [] and lm._auto_precision is None
    auto = lm.score(records, checked=True)
    exact = lm.score(records, checked=True, amp=False)
    assert auto.log_likelihood.tolist() == exact.log_likelihood.tolist()
    assert np.array_equal(lm.embed(dict(records)), lm.embed(dict(records), amp=False))


@pytest.mark.parametrize("bf16_seconds, expected, pairs_run", [
    (lambda k: 0.75, "bfloat16", 6),  # 1.33x in every pair: bf16
    (lambda k: 0.95, "float32", 2),  # 1.05x: within the noise, settled by the first timed pair
    (lambda k: 0.95 if k == 3 else 0.75, "float32", 4),  # 1.33x but once 1.05x: not in every pair, fp32
])
def test_a_large_job_takes_bf16_only_at_the_margin_in_every_pair_and_once_per_model(
        lm, fake_timing, bf16_seconds, expected, pairs_run):
    runs = fake_timing(lambda dtype, k: 1.0 if dtype == "float32" else bf16_seconds(k))
    records = genes(700, 300)  # 700 x 302 tokens: over AUTO_MIN_TOKENS
    assert sum(len(d) // 3 + 1 for _, d in records) >= precision.AUTO_MIN_TOKENS
    assert lm.inference_amp(records) is (expected == "bfloat16")
    assert len(runs) == 2 * pairs_run and lm._auto_precision.dtype == expected
    assert lm._auto_precision.measurement["rule"] == precision.DECISION_RULE
    assert lm.inference_amp(genes(800, 300, seed=1)) is (expected == "bfloat16") and len(runs) == 2 * pairs_run


def test_amp_true_or_false_pins_without_timing(lm, fake_timing):
    runs = fake_timing(lambda dtype, k: pytest.fail("a pinned choice was timed"))
    records = genes(700, 300)
    assert lm.inference_amp(records, amp=True) is True
    assert lm.inference_amp(records, amp=False) is False
    assert runs == [] and lm._auto_precision is None


@pytest.mark.parametrize("command", [["eval-perplexity", "RUN", "--fasta", "x.fa"],
                                     ["query", "RUN", "--mode", "score"],
                                     ["extract-embeddings", "--run_id", "RUN", "--fasta", "x.fa", "--out", "o.npz"]])
def test_amp_flag_bare_means_true_and_takes_auto_true_false(command, capsys):
    parse = build_parser().parse_args
    assert parse(command).amp == "auto"
    assert parse([*command, "--amp"]).amp is True
    assert parse([*command, "--amp", "true"]).amp is True
    assert parse([*command, "--amp", "false"]).amp is False
    assert parse([*command, "--amp", "AUTO"]).amp == "auto"
    with pytest.raises(SystemExit) as exit_info:
        parse([*command, "--amp", "maybe"])
    assert exit_info.value.code == 2 and "expected auto, true or false" in capsys.readouterr().err


def test_the_timed_batch_is_one_real_batch_of_median_rows_within_the_budget(lm):
    tokens = [np.arange(3, 3 + n) % 60 + 3 for n in (10, 50, 90, 130, 170)]
    forward = sliding.sample_forward(lm.model, tokens, None, 400)
    assert forward(contextlib.nullcontext) == 2 * 129  # the median rows (89, 129 inputs, padded to 129); 3 x 169 > 400
    assert forward(lambda: torch.autocast("cpu", dtype=torch.bfloat16)) == 2 * 129
