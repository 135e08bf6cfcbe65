"""`plan --schema` describes what the validator accepts: every shipped spec validates against it,
and it still rejects what the validator rejects."""
from pathlib import Path

import jsonschema
import pytest
import yaml

from planner.spec.loading import _SpecLoader, json_schema

SPECS = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_specs_validate_against_the_schema(path):
    jsonschema.validate(yaml.load(path.read_text(), Loader=_SpecLoader), json_schema())


def test_schema_rejects_unknown_keys_and_a_model_without_shape():
    schema = json_schema()
    base = {"model": "gpt2-124m", "cluster": {"gpu": "H100"},
            "training": {"tokens": 1e9, "global_batch_sequences": 8}}
    jsonschema.validate(base, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**base, "modle": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**base, "model": {"arch": "gpt2", "d_model": 64}}, schema)


def test_yaml_12_exponents_are_numbers(tmp_path):
    text = "a: 4.194304e6\nb: 2e12\nc: 1_000\nd: '3e5'\n"
    assert yaml.load(text, Loader=_SpecLoader) == {"a": 4194304.0, "b": 2e12, "c": 1000,
                                                  "d": "3e5"}
