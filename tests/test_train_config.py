"""percs.train.config: files, overrides, typed parsing, errors naming the key, the resolved-config round trip."""

from __future__ import annotations

import json

import pytest

from percs.cli import main
from percs.train.config import (ConfigError, TrainConfig, apply_overrides, config_from_dict, config_to_dict,
                                load_config, parse_override, write_config)


def write(tmp_path, text: str, name: str = "c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_paper_defaults():
    config = TrainConfig()
    assert (config.optim.optimizer, config.optim.weight_decay, config.optim.lr) == ("adam", 0.1, 1e-4)
    assert (config.schedule.batch_size, config.schedule.epochs, config.schedule.lr_drop_epochs) == (1, 60, 10)
    assert config.schedule.lr_drop_factor == 0.1
    assert config.data.sampling.crop_size == 224 and config.data.sampling.flip_probability == 0.5
    assert config.optim.freeze_backbone and config.optim.backbone_weight_decay == 0.0
    assert config.train.feature_cache_variants == 8 and not config.model.head.generic


def test_toml_file_and_overrides(tmp_path):
    path = write(tmp_path, '[optim]\nlr = 3e-4\n[model.head]\ndim = 64\ndecoder_channels = [32, 16]\n')
    config = load_config(path, ["optim.optimizer=adamw", "schedule.epochs=5", "schedule.lr_drop_epochs=1", "model.head.generic=true",
                                "data.dataset=/some/path", "data.sampling.paste=none", "optim.betas=[0.8, 0.9]"])
    assert config.optim.lr == 3e-4 and config.optim.optimizer == "adamw"
    assert config.model.head.dim == 64 and config.model.head.decoder_channels == (32, 16)
    assert config.model.head.generic and config.schedule.epochs == 5 and config.optim.betas == (0.8, 0.9)
    assert config.data.dataset == "/some/path" and config.data.sampling.paste is None


def test_int_is_accepted_as_float_but_not_the_reverse():
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"schedule\.epochs: expected an integer"):
        config_from_dict({"schedule": {"epochs": 2.5}})


@pytest.mark.parametrize("data, message", [
    ({"optim": {"lrr": 1e-3}}, r"unknown key optim\.'lrr'"),
    ({"optimiser": {}}, r"unknown key 'optimiser'"),
    ({"model": {"head": {"depthh": 2}}}, r"unknown key model\.head\.'depthh'"),
    ({"optim": {"lr": "fast"}}, r"optim\.lr: expected a number, got 'fast'"),
    ({"optim": {"lr": -1.0}}, r"optim\.lr must be > 0"),
    ({"optim": {"optimizer": "sgd"}}, r"optim\.optimizer 'sgd'"),
    ({"log": {"progress": 1}}, r"log\.progress: expected true or false"),
    ({"schedule": {"epochs": 5, "lr_drop_epochs": 6}}, r"schedule\.lr_drop_epochs"),
    ({"model": {"backbone": "vitx14"}}, r"model\.backbone 'vitx14'"),
    ({"model": {"head": {"dim": 30}}}, r"head\.num_heads 4 does not divide head\.dim 30"),
    ({"data": {"sampling": {"crop_size": 100}}}, r"data\.sampling: crop_size is 100"),
    ({"model": {"head": {"decoder_channels": [1, "a"]}}}, r"model\.head\.decoder_channels\[1\]"),
    ({"train": {"device": "tpu"}}, r"train\.device 'tpu'"),
    ({"optim": 3}, r"optim must be a table"),
])
def test_bad_keys_and_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_override_parsing():
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("a=/x/y z") == (["a"], "/x/y z")
    assert parse_override('a="quoted"') == (["a"], "quoted")
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=2"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="suffix '.ini'"):
        load_config(write(tmp_path, "", "c.ini"))
    with pytest.raises(ConfigError, match="c.toml"):
        load_config(write(tmp_path, "[optim\nlr = 1"))
    yaml_file = write(tmp_path, "optim:\n  lr: 0.001\n", "c.yaml")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="PyYAML"):
            load_config(yaml_file)
    else:
        assert load_config(yaml_file).optim.lr == 1e-3


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["model.head.generic=true", "data.sampling.distractor_types=['a']", "optim.lr=2e-4"])
    write_config(config, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == config
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


def test_cli_rejects_a_bad_override(tmp_path, capsys):
    path = write(tmp_path, "[optim]\nlr = 1e-4\n")
    assert main(["train", "--config", str(path), "--set", "optim.momentum=0.9", "--out", str(tmp_path / "r")]) == 1
    assert "unknown key optim.'momentum'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r")]) == 1


def test_cli_reports_a_missing_weights_file_without_a_traceback(tmp_path, capsys):
    """A missing backbone file is an error message naming it, not a traceback."""
    from train_helpers import make_benchmark

    bench = make_benchmark(tmp_path / "b")
    missing = tmp_path / "nowhere" / "dinov2_vits14_pretrain.pth"
    assert main(["train", "--set", f"data.dataset={bench}", "--set", "model.backbone=vits14",
                 "--set", f"model.backbone_weights={missing}", "--out", str(tmp_path / "r")]) == 1
    assert f"weights file {missing} does not exist" in capsys.readouterr().err
