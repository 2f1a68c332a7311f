"""Test helper: a tiny from-scratch Llama and a locally trained BPE tokenizer (docs/models.md §2).

No download, built in well under a second, and the same classes as SmolLM2 (``LlamaForCausalLM``, a
fast tokenizer with a chat template), so tests exercise the real code paths. Not library code.
"""

from __future__ import annotations

import functools

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Every chat template under test finds its control tokens as single special tokens.
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "[INST]", "[/INST]", "<unk>"]

CORPUS = [
    "Thought: I should look around first.\nAction: look",
    "Thought: The key is in the drawer.\nAction: open drawer 1",
    "Observation: You see a table, a drawer and a lamp.",
    "Observation: Error: Invalid command format.",
    "You are an agent in a household. Your goal is to put a clean mug on the table.",
    "Available actions: look, inventory, go to {recep}, open {recep}, take {obj} from {recep}.",
    "Answer in the format Thought: ...\nAction: ...",
] * 20


@functools.cache
def _bpe(style: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if style == "bytelevel":  # GPT-2 / SmolLM2 / Llama-3 style: any byte is representable
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "metaspace":  # SentencePiece / Mistral style: "▁" marks a preceding space
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        bpe.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\u2581"]
    else:
        raise ValueError(style)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    return bpe.to_str()


def tiny_tokenizer(chat_template: str = CHATML, bos_token: str = "<|im_start|>",
                   eos_token: str = "<|im_end|>", style: str = "bytelevel"):
    """A 512-token BPE tokenizer (trained once per process) wearing the given chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe(style)), bos_token=bos_token,
                                  eos_token=eos_token, pad_token=eos_token, unk_token="<unk>")
    tok.chat_template = chat_template
    return tok


def tiny_model(tokenizer, seed: int = 0):
    """A 2-layer Llama (~0.1 M parameters) sized for the tokenizer, randomly initialised from ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)
