"""Config schema: shipped configs load; typos and impossible values give one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from codonlm.config import load_config, parse_config
from codonlm.errors import UserError
from codonlm.runid import make_run_id

REPO = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return yaml.safe_load((REPO / "configs" / "tiny_mps.yaml").read_text())


@pytest.mark.parametrize("name", ["tiny_mps.yaml", "tiny_cpu.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert len(cfg.data.datasets) == 7 and cfg.model.condition_on_host and cfg.model.host_dropout == 0.1
    assert cfg.model.hosts == [d.name for d in cfg.data.datasets] and cfg.model.vocab_size == 68 + 7  # a token each


def test_run_id_format():
    import datetime as dt

    cfg = load_config(REPO / "configs" / "tiny_mps.yaml")
    assert make_run_id(cfg, dt.date(2026, 1, 2)) == "2026-01-02_tiny_6L4H_d256_e5"


def _error(raw: dict) -> str:
    with pytest.raises(UserError) as exc:
        parse_config(raw, "cfg.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("cfg.yaml")
    return msg


def test_unknown_key_names_closest():
    raw = _base()
    raw["model"]["n_layers"] = 4
    msg = _error(raw)
    assert "model.n_layers" in msg and "did you mean 'n_layer'" in msg
    raw = _base()
    raw["trian"] = {}
    assert "did you mean 'train'" in _error(raw)
    raw = _base()
    raw["data"]["datasets"][0]["minlen"] = 3
    assert "did you mean 'min_len'" in _error(raw)


@pytest.mark.parametrize("section,key,suggestion", [
    ("train", "learning_rate", "lr"),  # a common alias, not the nearest spelling (weight_decay)
    ("train", "n_epochs", "epochs"),
    ("train", "block_size", "model.block_size"),  # a valid key in another section: named with it
    ("model", "d_model", "n_embd"),
    (None, "learning_rate", "train.lr"),
    ("schedule", "min_learning_rate", "min_lr"),
])
def test_unknown_key_suggests_across_the_schema(section, key, suggestion):
    raw = _base()
    (raw[section] if section else raw)[key] = 1
    where = f"{section}.{key}" if section else key
    assert _error(raw) == f"cfg.yaml: unknown config key '{where}'; did you mean '{suggestion}'?"


def test_misspelt_required_key_is_named_not_reported_as_missing():
    raw = _base()
    raw["data"]["datasets"][0]["gbf"] = raw["data"]["datasets"][0].pop("gbff")
    msg = _error(raw)
    assert msg == ("cfg.yaml: unknown config key 'data.datasets.0.gbf'; did you mean 'gbff'? "
                   "(gbff is required: rename gbf to gbff)")


def test_unknown_key_like_nothing_lists_the_valid_keys():
    raw = _base()
    raw["schedule"]["banana"] = 1
    msg = _error(raw)
    assert msg == ("cfg.yaml: unknown config key 'schedule.banana'; valid keys there: scheduler, warmup_steps, "
                   "min_lr, plateau_patience, early_stop_patience")


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("model", "n_embd", 250, "divisible by n_head"),
        ("model", "block_size", 4, "block_size"),
        ("data", "val_frac", 1.5, "val_frac"),
        ("data", "test_frac", -0.1, "test_frac"),
        ("data", "pack_mode", "triple", "pack_mode"),
        ("train", "batch_size", "many", "batch_size"),
        ("train", "epochs", 0, "epochs"),
        ("train", "optimizer", "sgd", "optimizer"),
        ("model", "dropout", 1.0, "dropout"),
    ],
)
def test_impossible_values(section, key, value, needle):
    raw = _base()
    raw[section][key] = value
    assert needle in _error(raw)


def test_epochs_auto_allowed_and_fractions_sum():
    raw = _base()
    raw["train"]["epochs"] = "auto"
    assert parse_config(raw).train.epochs == "auto"
    raw["data"]["val_frac"], raw["data"]["test_frac"] = 0.6, 0.5
    assert "no training data" in _error(raw)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
