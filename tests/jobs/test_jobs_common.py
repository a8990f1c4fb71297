"""jobs.common: chat rendering, adapter safety checks, JSONL/config helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.common import (
    JobConfigError,
    UnsafeAdapterError,
    check_adapter_dir,
    choose_precision,
    load_tokenizer,
    read_jsonl,
    render_chat,
    require_keys,
    write_json_atomic,
    write_jsonl,
)

pytestmark = pytest.mark.train

CONVO = [
    {"role": "user", "content": "Rename the identifier `userIdMap` to snake_case."},
    {"role": "assistant", "content": "user_id_map"},
]


def test_render_chat_splits_prompt_and_answer_with_the_template(quick_base: Path) -> None:
    tok = load_tokenizer(str(quick_base))
    assert tok.chat_template  # the tiny base ships one, so apply_chat_template is the path under test
    r = render_chat(tok, CONVO, add_generation_prompt=False)
    assert r.prompt_ids[0] == tok.bos_token_id
    assert tok.decode(r.prompt_ids).endswith("Assistant:")
    assert r.answer_ids[-1] == tok.eos_token_id
    assert tok.decode(r.answer_ids, skip_special_tokens=True).strip() == "user_id_map"
    # Generation starts from exactly the ids training used as the prompt.
    gen = render_chat(tok, CONVO[:1], add_generation_prompt=True)
    assert gen.prompt_ids == r.prompt_ids and gen.answer_ids == []


def test_render_chat_requires_a_final_assistant_message(quick_base: Path) -> None:
    tok = load_tokenizer(str(quick_base))
    with pytest.raises(JobConfigError, match="assistant"):
        render_chat(tok, CONVO[:1], add_generation_prompt=False)


def test_render_chat_falls_back_when_tokenizer_has_no_template(quick_base: Path) -> None:
    tok = load_tokenizer(str(quick_base))
    tok.chat_template = None
    r = render_chat(tok, CONVO, add_generation_prompt=False)
    assert tok.decode(r.answer_ids, skip_special_tokens=True).strip() == "user_id_map"
    assert r.answer_ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("bad_name", ["adapter_model.bin", "pytorch_model.pt", "extra.pth", "opt.pkl"])
def test_adapter_with_pickled_weights_is_refused(tmp_path: Path, bad_name: str) -> None:
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / bad_name).write_bytes(b"pickle")
    with pytest.raises(UnsafeAdapterError, match="pickled"):
        check_adapter_dir(tmp_path)


def test_adapter_without_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UnsafeAdapterError, match=r"adapter_model\.safetensors"):
        check_adapter_dir(tmp_path)
    with pytest.raises(UnsafeAdapterError, match="not found"):
        check_adapter_dir(tmp_path / "missing")


def test_precision_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert choose_precision("auto", cpu) == ("fp32", torch.float32)
    assert choose_precision("bf16", cpu) == ("bf16", torch.bfloat16)
    with pytest.raises(JobConfigError):
        choose_precision("fp16", cpu)
    with pytest.raises(JobConfigError):
        choose_precision("int4", cpu)


def test_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    rows = [{"id": "a", "x": "ü"}, {"id": "b"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(JobConfigError, match=r"bad\.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")
    write_json_atomic(tmp_path / "s" / "x.json", {"a": 1})
    assert json.loads((tmp_path / "s" / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["x.json"]  # no temp file left behind


def test_require_keys_rejects_unknown_and_missing() -> None:
    assert require_keys({"a": 1}, required=["a"], optional={"b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(JobConfigError, match="unknown key"):
        require_keys({"a": 1, "zz": 0}, required=["a"], optional={})
    with pytest.raises(JobConfigError, match="missing required"):
        require_keys({}, required=["a"], optional={})
