"""metrics.jsonl has one reader (`run_dir.read_metrics`), tolerant of what a killed run leaves."""

from __future__ import annotations

import json

from permrl.run_dir import MetricsLog, last_validation, read_metrics

LINES = [{"step": 1, "lr": 0.1}, {"step": 2, "spatial_val_accuracy": 0.25},
         {"step": 3, "spatial_val_accuracy": 0.5, "lr": float("nan")}, {"step": 4, "lr": 1e-3}]


def write(path, torn: str = '{"step": 5, "spatial_val_acc') -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in LINES) + "\n[1, 2]\n" + torn)


def test_torn_blank_and_non_object_lines_are_skipped_by_every_reader(tmp_path):
    write(tmp_path / "metrics.jsonl")
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert last_validation(tmp_path / "metrics.jsonl") == {"spatial": 0.5}
    assert read_metrics(tmp_path / "absent") == []


def test_resume_keeps_the_records_up_to_its_step_byte_for_byte(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path)
    MetricsLog(path, resume_step=3)
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in LINES[:3])
