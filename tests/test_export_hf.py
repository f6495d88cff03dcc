"""Hugging Face export: AutoTokenizer round trip, same scores and greedy generation as ours, model card."""

from __future__ import annotations

import json
import logging
import re
import warnings

import numpy as np
import pytest
import torch

from codonlm.cli import main
from codonlm.config import ModelConfig, config_sha256, parse_config
from codonlm.data.codons import EOS, ITOS, decode, encode
from codonlm.errors import UserError
from codonlm.evaluate.perplexity import score_genes
from codonlm.evaluate.sampling import generate
from codonlm.model.checkpoint import save_checkpoint
from codonlm.model.hf_export import export_hf
from codonlm.model.tinygpt import TinyGPT

transformers = pytest.importorskip("transformers")


def peaked_model(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    model = TinyGPT(ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def random_dna(n: int, seed: int) -> str:
    return decode(np.random.default_rng(seed).integers(4, 68, n))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = peaked_model()
    return model, export_hf(model, tmp_path_factory.mktemp("hf") / "codon-model", ITOS)


def test_tokenizer_round_trip(exported):
    tok = transformers.AutoTokenizer.from_pretrained(exported[1])
    for seed in range(5):
        dna = random_dna(10 + 7 * seed, seed)
        ids = tok(dna).input_ids
        assert ids == encode(dna).tolist()  # <BOS_CDS> + one id per codon, as our tokenizer
        assert tok.decode(ids, skip_special_tokens=True) == dna
    assert tok("atg aaa\ngcu").input_ids == encode("ATGAAAGCT").tolist()  # case, whitespace, U as ours
    assert tok("ATGAAATAA<EOS_CDS>").input_ids == encode("ATGAAATAA", add_eos=True).tolist()
    batch = tok(["ATG", "ATGAAAGCT"], padding=True)
    assert batch.input_ids[0] == [0, 0, 1, 18] and batch.attention_mask[0] == [0, 0, 1, 1]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<BOS_CDS>", "<EOS_CDS>", "<PAD>")


@pytest.mark.parametrize("bad", ["ATGNAA", "ATGAA", "ATG-AA"])
def test_tokenizer_refuses_what_is_not_coding_dna(exported, bad):
    tok = transformers.AutoTokenizer.from_pretrained(exported[1])
    with pytest.raises(Exception, match="UNK"):
        tok(bad)


def test_hf_scores_equal_ours(exported):
    model, out = exported
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    dnas = [random_dna(n, n) for n in (5, 30, 62)]  # within the 64-token window
    ours = [float(s.logp.sum()) for s in score_genes(model, [encode(d, add_eos=True) for d in dnas])]
    for dna, ll in zip(dnas, ours, strict=True):
        ids = tok(dna + "<EOS_CDS>", return_tensors="pt").input_ids
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].float(), -1)
        assert float(logp.gather(-1, ids[0, 1:, None]).sum()) == pytest.approx(ll, abs=2e-4)


def test_pipeline_continues_dna_codon_by_codon_as_our_sampler(exported):
    model, out = exported
    generator = transformers.pipeline("text-generation", model=str(out))
    for seed in range(3):
        prompt = random_dna(6, 100 + seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = generator(prompt, max_new_tokens=15, do_sample=False)[0]["generated_text"]
        ours = generate(model, [encode(prompt)], 15, top_k=1)[0]  # greedy: the single most likely token
        expected = decode(ours)
        assert text == expected and text.startswith(prompt) and len(text) % 3 == 0
        assert len(ours) - len(encode(prompt)) == 15 or ours[-1] == EOS


def endless_model() -> TinyGPT:
    """A model that never ends a gene, so generation runs until its length limit: a large constant feature
    in every embedding, which the tied output layer turns into a large margin against <EOS_CDS>."""
    model = peaked_model(1)
    with torch.no_grad():
        model.wte.weight[:, 0] = 5.0
        model.wte.weight[EOS, 0] = -5.0
        model.ln_f.weight[0] = 1.0
    return model


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _generate_without_arguments(out, prompt: str, n: int) -> tuple[list[str], list[str]]:
    """n texts of pipeline("text-generation")(prompt), and every warning (logged or raised) on the way."""
    generator = transformers.pipeline("text-generation", model=str(out))
    logging.Logger.warning_once.cache_clear()  # transformers logs the context warning once per process
    handler, logger = _Messages(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(0)
            texts = [generator(prompt)[0]["generated_text"] for _ in range(n)]
    finally:
        logger.removeHandler(handler)
    return texts, handler.messages + [str(w.message) for w in caught]


def test_pipeline_without_arguments_samples_and_stops_within_the_context(tmp_path):
    model = endless_model()
    out = export_hf(model, tmp_path / "endless", ITOS)
    config = json.loads((out / "generation_config.json").read_text())
    assert config["eos_token_id"] == EOS and config["do_sample"] is True
    assert config["max_length"] <= model.cfg.block_size
    texts, messages = _generate_without_arguments(out, "ATGAAAGCT", 3)
    assert not [m for m in messages if "maximum length" in m or "exceed" in m], messages
    for text in texts:
        assert text.startswith("ATGAAAGCT") and set(text) <= set("ACGT")
        assert len(text) == 3 * (model.cfg.block_size - 1)  # <BOS_CDS> + codons fill the context, no more
    assert len(set(texts)) == 3  # sampled: greedy would give the same gene three times


def test_card_example_runs_as_written(tmp_path, monkeypatch, capsys):
    out = export_hf(endless_model(), tmp_path / "codon-model", ITOS)
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    assert 'generate("ATGAAAGCT")[0]' in code  # the pipeline without generation arguments
    assert "tok.decode(out[0], skip_special_tokens=True)" in code
    monkeypatch.chdir(tmp_path)  # the card names the folder as ./codon-model
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(code, {})
    scored, *genes = capsys.readouterr().out.splitlines()
    assert scored == "ATGAAAGCTTAA" and len(genes) == 2
    for gene in genes:  # the pipeline's and generate()'s: DNA only, within the 64-token context
        assert gene.startswith("ATGAAAGCT") and set(gene) <= set("ACGT") and len(gene) == 3 * 63


def test_export_refuses_another_vocabulary(tmp_path):
    with pytest.raises(UserError, match="vocabulary"):
        export_hf(peaked_model(), tmp_path / "x", ITOS[::-1])
    assert not (tmp_path / "x").exists()


def _run(tmp_path, with_metrics: bool):
    cfg = parse_config({"name": "c", "model": {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32},
                        "data": {"datasets": [{"name": "ecoli", "gbff": "a.gbk"},
                                              {"name": "archaeon", "gbff": "b.gbk", "transl_table": 11}]},
                        "outputs": {"runs_dir": str(tmp_path / "runs"), "out_dir": str(tmp_path / "ckpt")}})
    save_checkpoint(tmp_path / "ckpt" / "r1" / "best.pt", {"model": peaked_model().state_dict(), "run_id": "r1",
                                                         "config": cfg.model_dump(mode="json"), "itos": ITOS,
                                                         "step": 77})
    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    split = {s: {"genes": g} for s, g in (("train", 900), ("val", 50), ("test", 48))}
    prepare = {"datasets": {"ecoli": {"extraction": {"kept": 4234, "kept_codons": 1355396}, "splits": split},
                            "archaeon": {"extraction": {"kept": 1700, "kept_codons": 500000}, "splits": split}}}
    (folder / "pipeline_prepare.json").write_text(json.dumps(prepare))
    if with_metrics:
        (folder / "evaluate").mkdir()
        (folder / "evaluate" / "metrics.json").write_text(json.dumps({
            "split": "test", "genes": 96, "stride": 16,
            "model": {"perplexity": 40.51, "loss": 3.7016, "n_targets": 31000, "top1_accuracy": 0.1, "aa_accuracy": 0.2},
            "baselines": {"unigram": {"perplexity": 53.8, "loss": 3.985}, "kneser_ney_3": {"perplexity": 48.2,
                                                                                           "loss": 3.875}}}))
    return cfg


@pytest.mark.parametrize("with_metrics", [True, False])
def test_export_cli_card_says_data_perplexity_and_how_to_cite(tmp_path, capsys, with_metrics):
    cfg = _run(tmp_path, with_metrics)
    out = tmp_path / "export"
    assert main(["export-hf", "r1", str(out), "--checkpoints-dir", str(tmp_path / "ckpt")]) == 0
    card = (out / "README.md").read_text()
    assert "r1" in card and config_sha256(cfg) in card and "step 77" in card
    assert "| ecoli | 11 | 4,234 |" in card and "5,934 CDS in all" in card
    if with_metrics:
        assert "| this model | 40.51 |" in card and "| unigram | 53.80 |" in card and "| kneser_ney_3 | 48.20 |" in card
    else:
        assert "Not evaluated" in card and "codonlm evaluate r1" in card
    assert "one gene per sequence" in card.lower() and "64 tokens" in card
    assert str(tmp_path) not in card and not re.search(r"(^|[\s\"'(])/(work|tmp|home|Users|root)/", card)
    assert transformers.AutoTokenizer.from_pretrained(out)("ATG").input_ids == [1, 18]
    assert "tokenizer" in capsys.readouterr().out
