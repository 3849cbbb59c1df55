"""The typed config: defaults, YAML files, --set overrides and the errors for bad input."""

from __future__ import annotations

import json

import pytest

from ltray.config import Config, ConfigError, apply_overrides, load_config


def test_defaults_load_and_run_on_a_laptop():
    cfg = load_config()
    assert cfg == Config()  # no file, no overrides: the defaults as declared
    assert set(cfg.to_dict()) == {"data", "embed", "cf", "index", "rank", "blend", "serve", "eval"}
    assert cfg.data.dataset == "synthetic"
    assert cfg.data.synthetic.n_items == 5000
    assert cfg.data.head_share == 0.8
    assert cfg.data.test_fraction == 0.2
    assert cfg.data.min_user_interactions == 5
    assert cfg.data.null_text == "error" and cfg.data.unknown_items == "error"
    # GPU use is decided from the cluster at run time, never forced on by default.
    assert cfg.embed.device == "auto"
    assert cfg.rank.use_gpu == "auto"


def test_yaml_file_loads_and_keeps_other_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "data:\n"
        "  dataset: movielens-latest-small\n"
        "  head_share: 0.7\n"
        "  synthetic:\n"
        "    n_items: 123\n"
        "embed:\n"
        "  batch_size: 16\n"
        "eval:\n"
        "  ks: [5, 50]\n",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.data.dataset == "movielens-latest-small"
    assert cfg.data.head_share == 0.7
    assert cfg.data.synthetic.n_items == 123
    assert cfg.data.synthetic.n_users == Config().data.synthetic.n_users
    assert cfg.embed.batch_size == 16
    assert cfg.eval.ks == (5, 50)
    assert cfg.cf == Config().cf


def test_empty_yaml_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path) == Config()


@pytest.mark.parametrize(
    ("override", "section", "field", "expected"),
    [
        ("embed.batch_size=128", "embed", "batch_size", 128),
        ("data.head_share=0.65", "data", "head_share", 0.65),
        ("rank.lr=1e-3", "rank", "lr", 0.001),  # YAML reads 1e-3 as a string; pydantic makes it a float
        ("rank.debias_popularity=true", "rank", "debias_popularity", True),
        ("eval.tune=false", "eval", "tune", False),
        ("eval.ks=[10, 20, 100]", "eval", "ks", (10, 20, 100)),
        ("rank.hidden=[256,128,64]", "rank", "hidden", (256, 128, 64)),
        ("data.dataset=movielens-latest-small", "data", "dataset", "movielens-latest-small"),
        ("embed.model=null", "embed", "model", None),
        ("data.text_template={title}. Genres: {genres}", "data", "text_template",
         "{title}. Genres: {genres}"),
        ("data.items=/tmp/a=b.csv", "data", "items", "/tmp/a=b.csv"),  # only the first '=' splits
    ],
)
def test_set_overrides_parse_each_type(override, section, field, expected):
    cfg = load_config(overrides=[override])
    value = getattr(getattr(cfg, section), field)
    assert value == expected
    assert type(value) is type(expected)


def test_nested_override_reaches_the_synthetic_section():
    cfg = load_config(overrides=["data.synthetic.n_items=42", "data.synthetic.seed=3"])
    assert cfg.data.synthetic.n_items == 42
    assert cfg.data.synthetic.seed == 3
    assert cfg.data.synthetic.n_users == Config().data.synthetic.n_users


def test_overrides_win_over_the_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("embed:\n  batch_size: 16\n  pooling: cls\n", encoding="utf-8")
    cfg = load_config(path, overrides=["embed.batch_size=8"])
    assert cfg.embed.batch_size == 8
    assert cfg.embed.pooling == "cls"


def test_apply_overrides_edits_the_raw_mapping():
    data = {"embed": {"pooling": "cls"}}
    out = apply_overrides(data, ["embed.batch_size=4", "data.synthetic.n_users=11"])
    assert out == {"embed": {"pooling": "cls", "batch_size": 4}, "data": {"synthetic": {"n_users": 11}}}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("embed.batch_sise=128", "embed.batch_sise"),
        ("data.synthetic.n_itemz=5", "data.synthetic.n_itemz"),
        ("nosuchsection.x=1", "nosuchsection"),
    ],
)
def test_unknown_key_is_an_error_naming_it(override, named):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert named in str(e.value)


def test_unknown_key_in_yaml_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("cf:\n  factorz: 12\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "cf.factorz" in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("embed.batch_size=many", "embed.batch_size"),
        ("embed.batch_size=0", "embed.batch_size"),  # below its minimum
        ("data.head_share=1.5", "data.head_share"),
        ("embed.pooling=max", "embed.pooling"),  # not one of the allowed values
        ("data.null_text=ignore", "data.null_text"),
        ("rank.debias_popularity=[1, 2]", "rank.debias_popularity"),
        ("eval.ks=ten", "eval.ks"),
    ],
)
def test_wrong_type_or_value_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert field in str(e.value)


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="embed.batch_size"):
        load_config(overrides=["embed.batch_size"])


def test_override_into_a_plain_field_is_an_error():
    with pytest.raises(ConfigError, match="data.head_share"):
        load_config(overrides=["data.head_share.x=1"])


def test_bad_yaml_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  dataset: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "YAML" in str(e.value)


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- data\n- embed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_assignment_is_validated_too():
    cfg = load_config()
    with pytest.raises(ValueError):
        cfg.embed.batch_size = "lots"


def test_to_dict_is_json_and_round_trips():
    cfg = load_config(overrides=["eval.ks=[5]", "data.synthetic.n_items=77", "embed.model=some/model"])
    d = cfg.to_dict()
    text = json.dumps(d)  # fails on tuples of non-JSON types, Paths, etc.
    back = Config.model_validate(json.loads(text))
    assert back == cfg
    assert d["data"]["synthetic"]["n_items"] == 77
    assert d["eval"]["ks"] == [5]


def test_fingerprint_covers_only_the_named_sections():
    a = load_config()
    b = load_config(overrides=["rank.epochs=9"])
    assert a.fingerprint("data", "embed") == b.fingerprint("data", "embed")
    assert a.fingerprint("rank") != b.fingerprint("rank")
    assert set(a.fingerprint("data", "embed")) == {"data", "embed"}
