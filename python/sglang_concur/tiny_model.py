"""Make the embedded models locally: random weights, a locally trained byte-level BPE tokenizer.

    python -m sglang_concur.tiny_model OUT_DIR      # writes OUT_DIR/tiny and OUT_DIR/small

`tiny` (Qwen3, hidden 64, 2 layers, bf16) is for tests; `small` (Qwen3, hidden 384, 6 layers,
float32) makes prefill cost real time on a CPU, for the agent benchmark.  No hub access.
"""

from __future__ import annotations

import json
import os
import sys

MODELS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, torch_dtype="bfloat16"),
    "small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=64, torch_dtype="float32"),
}
VOCAB = 512
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "SGLang is a fast serving framework for large language models.",
    "An agent calls tools, reads results and plans the next step.",
    "Hello world! How are you today? I am fine, thank you.",
    "Radix cache shares prefixes between requests to save memory.",
] * 20


def make_tokenizer(out: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    hf.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    hf.save_pretrained(out)
    return hf.convert_tokens_to_ids("<|endoftext|>")


def make_model(name: str, out: str) -> str:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if os.path.exists(os.path.join(out, "config.json")):
        return out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    eos = make_tokenizer(out)
    spec = dict(MODELS[name])
    dtype = spec.pop("torch_dtype")
    cfg = Qwen3Config(vocab_size=VOCAB, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                      torch_dtype=dtype, **spec)
    Qwen3ForCausalLM(cfg).to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": eos, "pad_token_id": eos}, f)
    return out


def main(argv=None) -> None:
    root = (argv or sys.argv[1:] or ["models"])[0]
    for name in MODELS:
        print("model", make_model(name, os.path.join(root, name)))


if __name__ == "__main__":
    main()
