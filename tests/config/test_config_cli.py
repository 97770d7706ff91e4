"""``mmfuse config show / schema`` and ``mmfuse --version`` through the real CLI: every key with its value (head
hyperparameters and encoder options included), output that loads back, a JSON Schema that validates the shipped
example configs, and user errors that exit 2 with a "did you mean"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import mmfuse
from mmfuse.cli import app
from mmfuse.config import TrainConfig, load_config
from mmfuse.encoders import TEXT_ENCODERS, build_text_encoder, encoder_options
from mmfuse.fusion import head_params

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def invoke(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args])


def shown(*args: Any) -> dict[str, Any]:
    result = invoke("config", "show", *args)
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return yaml.safe_load(result.stdout)


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "data: {root: data, preset: hateful_memes}\nmodel: {head: {name: cross_attention, params: {hidden: 64}}}\n"
        "optim: {lr: 1e-4}\n",
        encoding="utf-8",
    )
    return path


def keys_of(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= keys_of(value, f"{prefix}{key}.")
    return out


def test_show_prints_every_key_with_the_head_and_encoder_defaults() -> None:
    data = shown()
    assert keys_of(TrainConfig().to_dict()) <= keys_of(data)  # every section and every setting of each
    assert data["model"]["head"]["name"] == "concat"
    assert data["model"]["head"]["params"] == head_params("concat")  # not {}: hidden, dropout, normalize
    assert {"hidden", "dropout"} <= set(data["model"]["head"]["params"])
    minilm = TEXT_ENCODERS.get("minilm")
    options = data["model"]["text_encoder"]["options"]
    assert set(options) == set(encoder_options(minilm.cls))  # pooling, max_length
    assert options["pooling"] == minilm.defaults["pooling"]  # the registered name's own default, not the class's


def test_show_reflects_the_file_and_overrides(cfg_file: Path) -> None:
    data = shown(cfg_file, "--set", "head.params.dropout=0.3", "-s", "lr=3e-4", "train.epochs=2")
    head = data["model"]["head"]
    assert head["name"] == "cross_attention"
    assert head["params"] == {**head_params("cross_attention"), "hidden": 64, "dropout": 0.3}
    assert data["optim"]["lr"] == 3e-4 and data["train"]["epochs"] == 2
    assert data["data"]["preset"] == "hateful_memes" and Path(data["data"]["root"]) == cfg_file.parent / "data"
    assert shown("head.name=align")["model"]["head"]["params"] == head_params("align")  # overrides without a file


def test_show_round_trips(cfg_file: Path, tmp_path: Path) -> None:
    printed = invoke("config", "show", cfg_file, "-s", "image_encoder.options.image_size=112").stdout
    again = tmp_path / "again.yaml"
    again.write_text(printed, encoding="utf-8")
    loaded, original = load_config(again), load_config(cfg_file, ["image_encoder.options.image_size=112"])
    # equal but for the defaults now written out, which build the same head and encoders
    assert loaded.model.head.params == {**head_params("cross_attention"), **original.model.head.params}
    assert loaded.model.image_encoder.options["image_size"] == 112
    for cfg in (loaded, original):
        cfg.model.head.params, cfg.model.text_encoder.options, cfg.model.image_encoder.options = {}, {}, {}
    assert loaded == original
    assert invoke("config", "show", again).stdout == printed  # a fixed point


def test_show_defaults_marks_what_differs(cfg_file: Path) -> None:
    result = invoke("config", "show", cfg_file, "--defaults", "-s", "train.epochs=2")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "name: cross_attention  # default: concat" in lines
    assert "hidden: 64  # default: 256" in lines  # the chosen head's default
    assert "lr: 0.0001  # default: 0.001" in lines
    assert "epochs: 2  # default: 10" in lines
    assert "batch_size: 32" in lines and "dropout: 0.1" in lines  # defaults stay unmarked
    assert yaml.safe_load(result.stdout) == shown(cfg_file, "-s", "train.epochs=2")  # comments only


def test_show_defaults_of_a_null_encoder_and_a_local_folder() -> None:
    from _tiny import tiny_bert_dir

    result = invoke("config", "show", "--defaults", "-s", "model.image_encoder=null", "-s", "head.name=text_only")
    assert result.exit_code == 0, result.output
    line = next(li for li in result.stdout.splitlines() if li.strip().startswith("image_encoder:"))
    assert line.strip().startswith("image_encoder: null  # default: {name: efficientnet-lite0")
    assert "options: {image_size: 224, resize: stretch}" in line  # the default encoder's own option defaults
    folder = shown("-s", f"text_encoder={tiny_bert_dir()}")["model"]["text_encoder"]
    assert folder["options"] == encoder_options(type(build_text_encoder(str(tiny_bert_dir()))))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["epoch=3"], ["unknown override key 'epoch'", "did you mean train.epochs?"]),
        (["--set", "dropout=0.2"], ["did you mean model.head.params.dropout"]),
        (["-s", "train.epoch=3"], ["train: unknown key(s) 'epoch'", "did you mean 'epochs'?"]),
        (["-s", "head.name=concatt"], ["unknown fusion head 'concatt'", "did you mean 'concat'?"]),
        (["-s", "text_encoder=minlm"], ["unknown text encoder 'minlm'", "did you mean 'minilm'?"]),
        (["-s", "text_encoder.options.poolng=cls"], ["unknown option(s) ['poolng']", "did you mean 'pooling'?"]),
        (["missing.yaml"], ["'missing.yaml' not found"]),
    ],
)
def test_show_user_errors_exit_2(args: list[str], expected: list[str]) -> None:
    result = invoke("config", "show", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    for part in expected:
        assert part in result.stderr, f"{part!r} not in {result.stderr!r}"


# ----------------------------------------------------------------------------------------------------- schema


def check(instance: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "") -> list[str]:
    """The parts of JSON Schema the config's schema uses ($ref, anyOf, allOf with if/then, not, type, enum, const,
    properties, required, additionalProperties, items); jsonschema is not a dependency. Returns the errors."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].removeprefix("#/$defs/")]
    errors: list[str] = []
    branches = [check(instance, s, root, where) for s in schema.get("anyOf", [])]
    if branches and all(branches):
        errors.append(f"{where}: matches none of anyOf: {'; '.join(e for b in branches for e in b)}")
    if "not" in schema and not check(instance, schema["not"], root, where):
        errors.append(f"{where}: matches 'not'")
    for rule in schema.get("allOf", []):
        if "if" in rule and not check(instance, rule["if"], root, where):
            errors += check(instance, rule["then"], root, where)
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind in ("number", "integer"):
        if isinstance(instance, bool) or not isinstance(instance, (int, float)):
            errors.append(f"{where}: not a {kind}: {instance!r}")
    elif kind is not None and not isinstance(instance, types[kind]):
        errors.append(f"{where}: not {kind}: {instance!r}")
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{where}: {instance!r} not in {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{where}: {instance!r} is not {schema['const']!r}")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: {key!r} is required" for key in schema.get("required", []) if key not in instance]
        for key, value in instance.items():
            if key in props:
                errors += check(value, props[key], root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unknown key {key!r}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += check(item, schema["items"], root, f"{where}[{i}]")
    return errors


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = invoke("config", "schema")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_schema_is_a_json_schema_of_every_section(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"  # what the YAML language server reads
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(TrainConfig.model_fields)
    refs = {s.removeprefix("#/$defs/") for s in json.dumps(schema).split('"$ref": "')[1:] for s in [s.split('"')[0]]}
    assert refs and refs <= set(schema["$defs"])  # every reference resolves


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_schema_validates_the_shipped_configs(schema: dict[str, Any], name: str) -> None:
    assert check(yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8")), schema, schema) == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"train": {"epoch": 3}}, "unknown key 'epoch'"),
        ({"optim": {"name": "adamx"}}, "'adamx' not in"),
        ({"model": {"head": {"name": "concat", "params": {"dim": 8}}}}, "unknown key 'dim'"),  # cross_attention's
        ({"model": {"head": {"params": {"num_heads": 2}}}}, "unknown key 'num_heads'"),  # default head: concat
        ({"model": {"head": {"name": "concatt"}}}, "matches none of anyOf"),
    ],
)
def test_schema_refuses_what_load_config_refuses(schema: dict[str, Any], config: dict, expected: str) -> None:
    assert any(expected in e for e in check(config, schema, schema))


def test_schema_takes_each_heads_own_params(schema: dict[str, Any]) -> None:
    for name in ("cross_attention", "early_fusion"):
        params = {k: v for k, v in head_params(name).items() if k != "hidden"}
        assert check({"model": {"head": {"name": name, "params": params}}}, schema, schema) == []
    assert check({"model": {"head": "align", "text_encoder": "minilm"}}, schema, schema) == []  # bare names


def test_schema_to_a_file(tmp_path: Path, schema: dict[str, Any]) -> None:
    out = tmp_path / "sub" / "mmfuse.schema.json"
    result = invoke("config", "schema", "-o", out)
    assert result.exit_code == 0 and str(out) in result.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == schema
    result = invoke("config", "schema", "-o", tmp_path)  # a folder
    assert result.exit_code == 2 and result.stderr.startswith(f"error: cannot write the schema to {str(tmp_path)!r}")


# ---------------------------------------------------------------------------------------------------- version


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"mmfuse {mmfuse.__version__} (torch ")


def test_version_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom mmfuse.cli import app\n"
        "result = CliRunner().invoke(app, ['--version'])\nprint(result.exit_code, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["0", "False"]
