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
from codonlm.evaluate.variants import VariantScanner, scan_work_tokens
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


def _fake_clock(monkeypatch, owner, name: str):
    """`install(seconds) -> runs`: `owner.name`, which returns the timed `forward(autocast)`, replaced by one that
    advances a fake clock by seconds(dtype, k) for the k-th forward of dtype; runs: the dtypes run, in order
    (the real inference_precision and interleaved_timer read the clock)."""
    clock, runs = [0.0], []

    def install(seconds):
        def make(*_args):
            def forward(autocast) -> int:
                dtype = "float32" if autocast is contextlib.nullcontext else "bfloat16"
                clock[0] += seconds(dtype, sum(d == dtype for d in runs))
                runs.append(dtype)
                return _args[-1]  # max_tokens: the batch is full
            return forward

        monkeypatch.setattr(owner, name, make)  # a module's function, or a method (self lands in _args)
        monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
        return runs

    return install


@pytest.fixture
def fake_timing(monkeypatch):
    """The timed forward batch of scoring/embeddings (sliding.sample_forward) on a fake clock."""
    return _fake_clock(monkeypatch, sliding, "sample_forward")


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


# ---- variant scans: the same chooser, the scan's own work and timed batch ------------------------------------


@pytest.fixture
def fake_scan_timing(monkeypatch):
    """As fake_timing, for a scan's timed batch (VariantScanner.timing_forward)."""
    install = _fake_clock(monkeypatch, VariantScanner, "timing_forward")
    return lambda seconds: install(lambda dtype, k: seconds(dtype))


def test_a_small_scan_runs_float32_untimed_and_equals_the_float32_scan(lm, fake_scan_timing):
    runs = fake_scan_timing(lambda dtype: pytest.fail("a small scan was timed"))
    records = genes(1, 60)  # 62 codons: 63 x 62 x 63 / 2 ~ 123k suffix tokens, under AUTO_MIN_TOKENS
    assert lm.scan_amp(records) is False and runs == [] and lm._auto_precision is None
    auto = lm.scan_variants(dict(records), region=(1, 4))
    assert auto.llr.tolist() == lm.scan_variants(dict(records), region=(1, 4), amp=False).llr.tolist()


def test_a_large_scan_is_timed_on_its_own_batch_and_the_choice_is_kept(lm, fake_scan_timing):
    """The job is the scan's forward tokens, not the gene's: one 120-codon gene (122 tokens, far under
    AUTO_MIN_TOKENS to score) is a 460k-token exact scan; its local scan (one pass) stays untimed float32."""
    runs = fake_scan_timing(lambda dtype: 1.0 if dtype == "float32" else 0.75)
    records = genes(1, 118)
    assert scan_work_tokens(120, range(1, 121)) == 121 + 63 * 121 * 120 // 2 > precision.AUTO_MIN_TOKENS
    assert lm.scan_amp(records, llr="local") is False and runs == []
    assert lm.scan_amp(records, region=(119, 120)) is False and runs == []  # two positions: a small job
    assert lm.scan_amp(records) is True and len(runs) == 12 and lm._auto_precision.dtype == "bfloat16"
    assert lm.scan_amp(genes(1, 200, seed=1)) is True and len(runs) == 12  # once per CodonLM
    assert lm.scan_amp(records, amp=False) is False


def test_the_scans_timed_batch_is_one_real_scan_position_in_the_callers_precision(lm):
    codons = np.random.default_rng(0).integers(4, 68, 150).astype(np.uint8)
    scanner = VariantScanner(lm.model)
    forward = scanner.timing_forward(codons, 4096)
    dtypes = []
    record = [("blocks.0.attn.hook_q", lambda x, hook: dtypes.append(x.dtype))]
    with lm.model.hooks(record):
        fp32_tokens = forward(contextlib.nullcontext)
        bf16_tokens = forward(lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    position = 151 - 4096 // 63  # 65 alternatives' suffix inputs of 63 rows, after the wild type's 151
    assert fp32_tokens == bf16_tokens == scan_work_tokens(150, [position]) and 3500 < fp32_tokens < 4400
    half = len(dtypes) // 2
    assert set(dtypes[:half]) == {torch.float32} and set(dtypes[half:]) == {torch.bfloat16}


def test_a_bf16_scan_autocasts_its_own_forwards_only(lm):
    """amp=True runs the model in bf16 (LLRs near fp32's), and autocast never leaks to the caller between
    yielded positions."""
    codons = np.random.default_rng(1).integers(4, 68, 40).astype(np.uint8)
    dtypes = []
    with lm.model.hooks([("blocks.0.attn.hook_q", lambda x, hook: dtypes.append(x.dtype))]):
        scan = VariantScanner(lm.model, amp=True).scan(codons, range(1, 10))
        bf16 = []
        for s in scan:
            assert not torch.is_autocast_enabled("cpu")
            bf16.append(s.llr)
    fp32 = [s.llr for s in VariantScanner(lm.model).scan(codons, range(1, 10))]
    assert dtypes and set(dtypes) == {torch.bfloat16}
    a, b = np.concatenate(fp32), np.concatenate(bf16)
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(a).max()
