"""``greenml._report`` on hand-made records: summary rows, formats and the human summary."""

from __future__ import annotations

import csv
import io
import json

import pytest

from greenml import GreenmlError
from greenml._report import _COLUMNS, describe_result, format_rows, summary_rows


def _meter(**over):
    rec = {
        "type": "meter", "name": "train", "duration_s": 10.0, "energy_j": 1500.0,
        "uncertainty_j": 3.0, "mean_power_w": 150.0, "co2e_g": 0.2, "count": 1,
        "steps": {"count": 100, "mean_j": 15.0},
        "estimated_domains": [],
    }
    rec.update(over)
    return rec


def _phase(name, meter="train", **over):
    rec = {
        "type": "phase", "name": name, "meter": meter, "duration_s": 2.0, "energy_j": 300.0,
        "uncertainty_j": 1.0, "mean_power_w": 150.0, "co2e_g": 0.04, "count": 2,
        "estimated_domains": ["cpu:estimated"],
    }
    rec.update(over)
    return rec


def _call(name, energy_j, duration_s=0.5, uncertainty_j=0.1, co2e_g=0.001, measured=None):
    return {
        "type": "call", "name": name, "duration_s": duration_s, "energy_j": energy_j,
        "uncertainty_j": uncertainty_j, "co2e_g": co2e_g,
        "measured": measured if measured is not None else {"gpu:0": True},
    }


# ----------------------------------------------------------------- summary_rows


def test_given_meter_and_phase_records_when_summarised_then_one_row_each_in_order():
    rows = summary_rows([_phase("fit", items=None, energy_per_item_j=None), _meter()])

    assert [(r["type"], r["name"]) for r in rows] == [("phase", "train/fit"), ("meter", "train")]
    phase, meter = rows
    assert phase["count"] == 2
    assert phase["j_per_step"] is None
    assert phase["estimated"] == "cpu:estimated"
    assert meter == {
        "type": "meter", "name": "train", "count": 1, "duration_s": 10.0, "energy_j": 1500.0,
        "uncertainty_j": 3.0, "mean_power_w": 150.0, "j_per_step": 15.0, "j_per_item": None,
        "co2e_g": 0.2, "estimated": "", "assumptions": "",
    }
    assert all(set(r) == {*_COLUMNS, "assumptions"} for r in rows)


def test_given_phase_with_items_when_summarised_then_energy_per_item_is_reported():
    (row,) = summary_rows([_phase("infer", items=1000, energy_per_item_j=0.3)])

    assert row["j_per_item"] == 0.3


def test_given_steps_without_count_when_summarised_then_no_energy_per_step():
    (row,) = summary_rows([_meter(steps={"count": 0})])

    assert row["j_per_step"] is None


def test_given_calls_of_two_functions_when_summarised_then_aggregated_per_name_after_others():
    records = [
        _call("f", 1.0), _meter(), _call("g", 10.0, duration_s=2.0), _call("f", 3.0),
        _call("f", 2.0, measured={"cpu:estimated": False, "gpu:0": True}),
    ]

    rows = summary_rows(records)

    assert [(r["type"], r["name"]) for r in rows] == [
        ("meter", "train"), ("function", "f"), ("function", "g")]
    f = rows[1]
    assert f["count"] == 3
    assert f["duration_s"] == pytest.approx(1.5)
    assert f["energy_j"] == pytest.approx(6.0)
    assert f["uncertainty_j"] == pytest.approx(0.3)
    assert f["co2e_g"] == pytest.approx(0.003)
    assert f["mean_power_w"] == pytest.approx(4.0)
    assert f["j_per_item"] == pytest.approx(2.0)
    assert f["j_per_step"] is None
    assert f["estimated"] == "cpu:estimated"
    assert rows[2]["mean_power_w"] == pytest.approx(5.0)


def test_given_a_call_with_null_energy_when_summarised_then_the_total_is_unknown_not_partial():
    rows = summary_rows([_call("f", 2.0), _call("f", None, uncertainty_j=None, co2e_g=None),
                         _call("f", 4.0)])

    (f,) = rows
    assert f["count"] == 3
    assert f["duration_s"] == pytest.approx(1.5)
    assert f["energy_j"] is None
    assert f["mean_power_w"] is None
    assert f["j_per_item"] is None


def test_given_records_with_null_or_nonfinite_numbers_when_summarised_then_none():
    rec = _meter(energy_j=None, uncertainty_j=float("nan"), mean_power_w=float("inf"),
                 co2e_g=None, duration_s="3 s", steps={"count": 2, "mean_j": None})

    (row,) = summary_rows([rec])

    assert row["energy_j"] is None
    assert row["uncertainty_j"] is None
    assert row["mean_power_w"] is None
    assert row["co2e_g"] is None
    assert row["duration_s"] is None
    assert row["j_per_step"] is None


def test_given_a_phase_without_meter_name_when_summarised_then_named_by_phase_alone():
    (row,) = summary_rows([_phase("eval", meter=None)])

    assert row["name"] == "/eval"


def test_given_no_records_when_summarised_then_no_rows():
    assert summary_rows([]) == []


# ----------------------------------------------------------------- format_rows


@pytest.fixture
def rows():
    return summary_rows([
        _phase("fit", estimated_domains=["cpu:estimated", "dram:estimated"]),
        _meter(energy_j=None, mean_power_w=None, co2e_g=None),
        _call("f", 1.23456789),
    ])


def test_given_rows_when_formatted_as_table_then_aligned_with_dashes_for_unknowns(rows):
    text = format_rows(rows)

    lines = text.splitlines()
    assert lines[0].split() == _COLUMNS
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + len(rows)
    assert len(lines[0]) == len(lines[1])
    cells = [line.split() for line in lines[2:]]
    assert cells[1][:2] == ["meter", "train"]
    assert cells[1][_COLUMNS.index("energy_j")] == "-"
    assert cells[2][_COLUMNS.index("energy_j")] == "1.235"  # 4 significant digits
    # every column starts at the same offset as its header
    starts = [lines[0].index(h) for h in _COLUMNS[:3]]
    assert [lines[3].index(c) for c in ("meter", "train")] == starts[:2]


def test_given_rows_when_formatted_as_table_by_default_then_same_as_explicit_table(rows):
    assert format_rows(rows) == format_rows(rows, "table")


def test_given_rows_when_formatted_as_csv_then_parses_back_with_empty_unknowns(rows):
    text = format_rows(rows, "csv")

    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == [*_COLUMNS, "assumptions"]
    assert len(parsed) == len(rows)
    assert parsed[0]["estimated"] == "cpu:estimated,dram:estimated"  # quoted, one cell
    assert parsed[1]["energy_j"] == ""
    assert float(parsed[2]["energy_j"]) == pytest.approx(1.23456789)  # full precision
    assert not text.endswith("\n")


def test_given_rows_when_formatted_as_json_then_parses_back_to_the_rows(rows):
    parsed = json.loads(format_rows(rows, "json"))

    assert parsed == rows
    assert parsed[1]["energy_j"] is None


def test_given_rows_when_formatted_as_markdown_then_a_table_with_one_cell_per_column(rows):
    lines = format_rows(rows, "markdown").splitlines()

    assert lines[0] == "| " + " | ".join(_COLUMNS) + " |"
    assert lines[1] == "|" + "---|" * len(_COLUMNS)
    assert len(lines) == 2 + len(rows)
    for line in lines[2:]:
        assert line.startswith("| ") and line.endswith(" |")
        assert line.count("|") == len(_COLUMNS) + 1
    assert "| - |" in lines[3]


def test_given_a_name_with_a_pipe_when_formatted_as_markdown_then_still_one_cell_per_column():
    rows = summary_rows([{"type": "run", "name": "sh -c 'a | b'", "energy_j": 1.0}])

    line = format_rows(rows, "markdown").splitlines()[2]

    assert line.replace("\\|", "").count("|") == len(_COLUMNS) + 1


def test_given_no_rows_when_formatted_then_headers_only():
    assert format_rows([]).splitlines()[0].split() == _COLUMNS
    assert json.loads(format_rows([], "json")) == []
    assert format_rows([], "csv").splitlines() == [",".join([*_COLUMNS, "assumptions"])]


def test_given_unknown_format_when_formatting_then_error_names_the_choices(rows):
    with pytest.raises(GreenmlError, match=r"unknown format 'xml'.*table, csv, json or markdown"):
        format_rows(rows, "xml")


# ----------------------------------------------------------------- describe_result


def _result(**over):
    rec = {
        "duration_s": 12.3456, "energy_j": 2468.0, "uncertainty_j": 4.0,
        "mean_power_w": 200.0, "peak_power_w": 310.5,
        "by_domain": {"gpu:0": 2000.0, "cpu:estimated": 468.0, "psys": 900.0},
        "measured": {"gpu:0": True, "cpu:estimated": False, "psys": True},
        "in_total": {"gpu:0": True, "cpu:estimated": True, "psys": False},
        "estimated_domains": ["cpu:estimated"],
        "co2e_g": 0.3243,
        "carbon": {"gco2e_per_kwh": 472.94, "region": "World", "year": 2024, "pue": 1.2},
        "unavailable": {},
    }
    rec.update(over)
    return rec


def test_given_a_full_result_when_described_then_every_fact_is_on_its_line():
    text = describe_result(_result(), title="greenml run (exit 0)")

    lines = text.splitlines()
    assert lines[0] == "greenml run (exit 0): 12.35 s"
    assert lines[1] == "  energy: 2468 J (+/- 4 J)"
    assert lines[2] == "  mean power: 200 W, peak 310.5 W"
    by_domain = {line.split()[0]: line for line in lines if line.startswith("    ")}
    assert "2000 J  (measured)" in by_domain["gpu:0"]
    assert "468 J  (ESTIMATED)" in by_domain["cpu:estimated"]
    assert "900 J  (measured, not in total)" in by_domain["psys"]
    assert "  carbon: 0.3243 gCO2e at 472.94 g/kWh (World 2024; PUE 1.2)" in lines
    assert "  cpu:estimated: a model" in lines  # no assumptions recorded: still labelled
    assert "above idle" not in text
    assert "not measured" not in text


def test_given_a_result_with_idle_baseline_when_described_then_energy_above_idle():
    text = describe_result(_result(net_energy_j=123.456))

    assert "  above idle: 123.5 J" in text.splitlines()


def test_given_a_result_without_uncertainty_or_peak_when_described_then_they_are_left_out():
    text = describe_result(_result(uncertainty_j=None, peak_power_w=None, estimated_domains=[]))

    lines = text.splitlines()
    assert lines[1] == "  energy: 2468 J"
    assert lines[2] == "  mean power: 200 W"
    assert "note:" not in text


def test_given_null_energies_when_described_then_it_says_not_measured_and_how_to_see_why():
    rec = _result(energy_j=None, uncertainty_j=None, mean_power_w=None, co2e_g=None,
                  peak_power_w=None, by_domain={"gpu:0": None}, measured={"gpu:0": True},
                  in_total={"gpu:0": True}, estimated_domains=[])

    text = describe_result(rec)

    lines = text.splitlines()
    assert lines[0] == "greenml: 12.35 s"
    assert lines[1].startswith("  energy: not measured")
    assert "greenml sensors" in lines[1]
    assert "mean power" not in text
    assert "carbon" not in text
    assert "gpu:0" in text and "-" in next(line for line in lines if "gpu:0" in line)


def test_given_unavailable_domains_when_described_then_reasons_are_listed_and_long_ones_cut():
    long_reason = "x" * 200
    text = describe_result(_result(unavailable={"gpu": "no driver", "cpu": long_reason}))

    lines = text.splitlines()
    assert "  not measured: gpu: no driver" in lines
    cut = next(line for line in lines if line.startswith("  not measured: cpu: "))
    assert cut == "  not measured: cpu: " + "x" * 160 + "..."


def test_given_an_empty_record_when_described_then_no_crash_and_unknowns():
    text = describe_result({})

    assert text.splitlines()[0] == "greenml: - s"
    assert "not measured" in text
