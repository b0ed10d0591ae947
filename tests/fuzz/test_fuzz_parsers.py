"""Property-based fuzzing (hypothesis) of the Python parsers: the environment and option
parsers, the carbon region lookup, and the log reader.

Whatever the input, a parser returns a valid value or raises ConfigError naming the variable;
the log reader never raises on damaged content and keeps every intact record. The committed
corpus (tests/fuzz/corpus/config, tests/fuzz/corpus/logs) is replayed first. The number of
generated examples per property is GREENML_FUZZ_EXAMPLES (default 200).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenml import _carbon, _config, _records
from greenml._errors import ConfigError

CORPUS = Path(__file__).resolve().parent / "corpus"
EXAMPLES = int(os.environ.get("GREENML_FUZZ_EXAMPLES", "200"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text a user might put in a variable: numbers in every spelling, words, and arbitrary text.
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(min_value=-10**30, max_value=10**30).map(str))
words = st.sampled_from(["", " ", "on", "off", "1", "0", "true", "no", "nvml", "rapl", "model",
                         "nvml,rapl", "DE", "deu", "World", "EU", "UK", "XX", "PCI_BUS_ID",
                         "FASTEST_FIRST", "nan", "-0", "1e-3", "0x10", "\x00"])
values = st.one_of(numbers, words, st.text(max_size=40),
                   st.tuples(words, words).map(lambda t: ",".join(t)))

PARSERS = {
    "GREENML_INTERVAL_MS": _config.parse_interval_ms,
    "GREENML_SOURCES": _config.parse_sources,
    "GREENML_ESTIMATE": _config.parse_estimate,
    "GREENML_LOG_FSYNC": _config.parse_log_fsync,
    "CUDA_DEVICE_ORDER": _config.parse_cuda_device_order,
}


def _check_parsed(name: str, value: str):
    try:
        out = PARSERS[name](value)
    except ConfigError as exc:
        assert name in str(exc), str(exc)
        return None
    if name == "GREENML_INTERVAL_MS":
        assert math.isfinite(out) and 0.05 <= out <= 60_000
    elif name == "GREENML_SOURCES":
        assert out and out <= set(_config.KNOWN_SOURCES)
    elif name == "CUDA_DEVICE_ORDER":
        assert out is None or out in _config.CUDA_DEVICE_ORDERS
    else:
        assert isinstance(out, bool)
    return out


@fuzz
@given(name=st.sampled_from(sorted(PARSERS)), value=values)
def test_given_any_text_when_parsing_a_variable_then_valid_value_or_config_error(name, value):
    _check_parsed(name, value)


def _check_intensity(what: dict) -> None:
    try:
        ci = _carbon.resolve_intensity(**what)
    except ConfigError as exc:
        msg = str(exc)
        assert any(k in msg for k in ("region", "intensity", "GREENML_REGION",
                                      "GREENML_CARBON_INTENSITY")), msg
        return
    assert math.isfinite(ci.gco2e_per_kwh) and ci.gco2e_per_kwh >= 0
    assert ci.region and ci.source


@fuzz
@given(region=values)
def test_given_any_region_when_resolving_then_table_value_or_config_error(region):
    _check_intensity({"region": region})
    _check_intensity({"env": {"GREENML_REGION": region}})
    _check_intensity({"env": {"GREENML_CARBON_INTENSITY": region}})


@fuzz
@given(env=st.dictionaries(st.sampled_from(sorted(PARSERS) + ["GREENML_REGION",
                                                              "GREENML_CARBON_INTENSITY"]),
                           values, max_size=4))
def test_given_any_environment_when_reading_settings_then_settings_or_one_named_error(env):
    try:
        s = _config.settings_from_env(env)
    except ConfigError as exc:
        assert any(name in str(exc) for name in env), str(exc)
        return
    assert math.isfinite(s.interval_ms) and s.sources


@pytest.mark.parametrize("path", sorted((CORPUS / "config").glob("*.env")), ids=lambda p: p.name)
def test_given_config_corpus_entry_when_parsed_then_valid_value_or_config_error(path):
    name, _, value = path.read_text(encoding="utf-8").rstrip("\n").partition("=")
    if name in PARSERS:
        _check_parsed(name, value)
    else:
        _check_intensity({"env": {name: value}})
    try:
        _config.settings_from_env({name: value})
    except ConfigError as exc:
        assert name in str(exc)


# ----------------------------------------------------------------- the log reader


def _read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # damaged lines are reported this way
        return _records.read_records(path)


@fuzz
@given(content=st.binary(max_size=2000))
def test_given_any_bytes_when_reading_a_log_then_records_or_warnings_never_an_error(
    tmp_path_factory, content,
):
    path = tmp_path_factory.mktemp("log") / "any.jsonl"
    path.write_bytes(content)
    assert all(isinstance(r, dict) for r in _read(path))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)
records = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@fuzz
@given(entries=st.lists(st.tuples(records, st.booleans(), st.floats(0, 1)), max_size=12))
def test_given_records_and_torn_writes_when_reading_then_exactly_the_intact_records(
    tmp_path_factory, entries,
):
    # Given: records written whole, interleaved with writers killed part way (no newline)
    text, intact = "", []
    for rec, torn, cut in entries:
        line = json.dumps(rec, separators=(",", ":"))
        if torn and len(line) > 1:
            text += line[: max(1, int(cut * (len(line) - 1)))]
        else:
            text += line + "\n"
            intact.append(rec)
    path = tmp_path_factory.mktemp("log") / "torn.jsonl"
    path.write_text(text)

    # Then: every intact record, in order, and nothing else
    assert _read(path) == intact


@pytest.mark.parametrize("path", sorted((CORPUS / "logs").glob("*.jsonl")), ids=lambda p: p.name)
def test_given_log_corpus_entry_when_read_then_records_or_warnings(path):
    out = _read(path)
    assert all(isinstance(r, dict) for r in out)
    if path.name == "torn-then-record.jsonl":
        assert [r["name"] for r in out] == ["a", "b"]
    if path.name == "non-objects.jsonl":
        assert [r["name"] for r in out] == ["d"]
