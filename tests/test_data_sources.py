"""Each source adapter on its bundled fixture (the source's real schema), and every bad-input case."""

from pathlib import Path

import pytest

from glue.core.io import UserError
from glue.data.sources import ADAPTERS, RowError, load_source

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "tests" / "fixtures" / "sources"
BAD = ROOT / "tests" / "fixtures" / "sources_bad"
ADAPTER_OF = {"openorca": "openorca", "alpaca_gpt4": "alpaca", "wizardlm": "sharegpt", "dolly": "dolly",
              "metamathqa": "metamath", "codealpaca": "alpaca", "anthropic_hh": "hh_dialogue"}


def load(name, path, adapter=None):
    return load_source(name, {"adapter": adapter or ADAPTER_OF[name], "fixture": str(path)}, ROOT)


@pytest.mark.parametrize("name", sorted(ADAPTER_OF))
def test_every_fixture_maps_to_records(name):
    loaded = load(name, SOURCES / f"{name}.jsonl")
    assert 20 <= loaded.rows_read <= 50
    assert len(loaded.records) >= 17
    # each fixture plants at least one empty row, which must be a counted reject with its line
    assert loaded.rejects and all(r["where"].startswith(str(SOURCES / name)) for r in loaded.rejects)
    assert loaded.rows_read == len(loaded.records) + len(loaded.rejects)
    for record in loaded.records:
        roles = [m["role"] for m in record["messages"] if m["role"] != "system"]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(m["content"] and m["content"] == m["content"].strip() for m in record["messages"])
        assert record["id"].startswith(f"{name}-") and record["source"] == name
    ids = [r["id"] for r in loaded.records]
    assert len(set(ids)) == len(ids)
    assert ids == [r["id"] for r in load(name, SOURCES / f"{name}.jsonl").records]  # stable across runs


def test_openorca_keeps_the_system_prompt_when_there_is_one():
    row = {"id": "x", "system_prompt": "Be brief.", "question": "Q?", "response": "A."}
    assert ADAPTERS["openorca"](row) == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    assert [m["role"] for m in ADAPTERS["openorca"](row | {"system_prompt": ""})] == ["user", "assistant"]


def test_instruction_and_input_become_one_user_message():
    messages = ADAPTERS["alpaca"]({"instruction": "Summarize.", "input": "Long text.", "output": "Short."})
    assert messages[0] == {"role": "user", "content": "Summarize.\n\nLong text."}
    dolly = ADAPTERS["dolly"]({"instruction": "Q?", "context": "", "response": "A.", "category": "open_qa"})
    assert dolly[0] == {"role": "user", "content": "Q?"}


def test_sharegpt_and_metamath_and_hh():
    conv = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                              {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}
    assert [m["role"] for m in ADAPTERS["sharegpt"](conv)] == ["user", "assistant", "user", "assistant"]
    assert ADAPTERS["metamath"]({"query": "1+1?", "response": "2", "type": "GSM", "original_question": "1+1?"})[1] == \
        {"role": "assistant", "content": "2"}
    hh = ADAPTERS["hh_dialogue"]({"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you",
                                  "rejected": "\n\nHuman: hi\n\nAssistant: no"})
    assert hh == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]
    with pytest.raises(RowError):
        ADAPTERS["hh_dialogue"]({"chosen": "Human: hi\nAssistant: hello"})


def test_malformed_line_is_a_counted_reject_with_its_line():
    loaded = load("alpaca_gpt4", BAD / "malformed.jsonl")
    assert len(loaded.records) == 3 and loaded.rows_read == 4
    [reject] = loaded.rejects
    assert reject["where"] == f"{BAD / 'malformed.jsonl'}:2" and "JSON" in reject["reason"]


def test_row_missing_its_fields_is_a_counted_reject():
    loaded = load("alpaca_gpt4", BAD / "missing_field.jsonl")
    assert len(loaded.records) == 2
    assert [(r["where"].rsplit(":", 1)[1], r["reason"]) for r in loaded.rejects] == [
        ("2", "missing field 'output'"), ("4", "field 'instruction' is list, expected a string")]
    assert loaded.rejects[0]["row"] == {"instruction": "Translate 'cat' to French.", "input": ""}


def test_non_utf8_line_is_a_counted_reject():
    loaded = load("alpaca_gpt4", BAD / "non_utf8.jsonl")
    assert len(loaded.records) == 2
    [reject] = loaded.rejects
    assert reject["where"].endswith("non_utf8.jsonl:2") and "utf-8" in reject["reason"].lower()


def test_empty_file_is_an_error_naming_it():
    with pytest.raises(UserError, match=r"empty.jsonl has no rows"):
        load("alpaca_gpt4", BAD / "empty.jsonl")


def test_source_with_no_usable_row_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "no response field"}\n')
    with pytest.raises(UserError, match=r"none of .*bad.jsonl's 1 rows is usable; first problem: .*bad.jsonl:1"):
        load("openorca", path)


def test_missing_file_and_unknown_adapter_are_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load("dolly", tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match="unknown adapter"):
        load("dolly", SOURCES / "dolly.jsonl", adapter="nope")


def test_hub_source_that_fails_to_load_is_an_error():
    # conftest switches the hub off, so this is the real loader failing
    with pytest.raises(UserError, match=r"source 'no-such-org/no-such-dataset' split 'train' failed to load"):
        load_source("x", {"adapter": "alpaca", "hub": "no-such-org/no-such-dataset", "split": "train"}, ROOT)
