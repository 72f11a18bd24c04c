"""The run record of an output folder: outputs appended one line at a time."""

import json

from skseg._run_record import (
    JOURNAL_NAME,
    RECORD_NAME,
    new_record,
    read_record,
    record_output,
    write_record,
)


def _entry(i):
    return {"input": f"img{i}.jpg", "sha1": f"{i:040x}", "overlay": False}


def test_outputs_are_appended_not_rewritten_and_read_back(tmp_path):
    record = new_record({"model": "m", "skseg": "0"})
    record["skipped"]["b.png"] = {"reason": "too small"}
    write_record(tmp_path, record)
    written = (tmp_path / RECORD_NAME).read_bytes()
    for name in ("a.png", "b.png", "c.png"):
        record_output(tmp_path, record, name, _entry(ord(name[0])))
    # The record file is as it was; the journal holds one line per output.
    assert (tmp_path / RECORD_NAME).read_bytes() == written
    assert len((tmp_path / JOURNAL_NAME).read_text().splitlines()) == 3
    read = read_record(tmp_path)
    assert read["outputs"] == record["outputs"] and set(read["outputs"]) == {"a.png", "b.png",
                                                                              "c.png"}
    assert read["skipped"] == {}
    # A rewrite takes the journal in and starts a new one.
    write_record(tmp_path, record)
    assert not (tmp_path / JOURNAL_NAME).exists()
    assert json.loads((tmp_path / RECORD_NAME).read_text())["outputs"] == record["outputs"]


def test_a_torn_line_is_skipped_and_the_next_output_still_counts(tmp_path):
    record = new_record({"model": "m", "skseg": "0"})
    write_record(tmp_path, record)
    record_output(tmp_path, record, "a.png", _entry(1))
    with open(tmp_path / JOURNAL_NAME, "ab") as journal:
        journal.write(b'{"journal": "' + record["journal"].encode() + b'", "na')  # killed here
    record_output(tmp_path, record, "c.png", _entry(3))
    assert set(read_record(tmp_path)["outputs"]) == {"a.png", "c.png"}


def test_an_older_journal_left_behind_is_not_read_into_a_newer_record(tmp_path):
    # A run stopped between rewriting the record and removing the journal:
    # the journal's lines belong to the record before, not to this one.
    record = new_record({"model": "m", "skseg": "0"})
    write_record(tmp_path, record)
    record_output(tmp_path, record, "a.png", _entry(1))
    stale = (tmp_path / JOURNAL_NAME).read_bytes()
    forced = new_record({"model": "other", "skseg": "0"})
    write_record(tmp_path, forced)
    (tmp_path / JOURNAL_NAME).write_bytes(stale)
    assert read_record(tmp_path)["outputs"] == {}
