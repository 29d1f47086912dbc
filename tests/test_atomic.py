"""audiopair.atomic: the one atomic write every module uses."""

from __future__ import annotations

import json

import pytest

from audiopair.atomic import atomic_path, atomic_write_json, atomic_write_jsonl, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_a_finished_write_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"b": 1, "a": "é"})
    assert target.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    assert atomic_write_jsonl(tmp_path / "rows.jsonl", [{"x": 1}, {"x": 2}]) == 2
    assert [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == [{"x": 1}, {"x": 2}]
    with atomic_path(target) as tmp:  # a writer that replaces the temporary by name (as soundfile / hard links do)
        tmp.unlink()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "rows.jsonl"]
