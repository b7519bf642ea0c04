"""The anchor-shaped decoder the decode benchmarks share: a Hugging Face LLaMA directory with
hidden 1024, MLP 2816, 4 layers, 16 heads, vocab 512, random weights (seeded), and a byte-level
BPE tokenizer trained offline on a few sentences (onnxruntime-genai's builder needs one).
Made once under bench/results/anchor/ and reused."""

from __future__ import annotations

from pathlib import Path

from common import RESULTS

SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16, vocab_size=512,
             max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)


def anchor_dir(kv_heads: int = 16) -> Path:
    """The anchor HF directory with `kv_heads` key/value heads, created on first use."""
    out = RESULTS / "anchor" / f"llama-kv{kv_heads}"
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=kv_heads, **SHAPE)).eval()
    with torch.no_grad():  # norm weights away from 1, so that a fusion that drops them shows numerically
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    _tokenizer().save_pretrained(out)
    return out


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=SHAPE["vocab_size"], special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["def main(argv):\n    return 0\n" * 40, "the quick brown fox jumps over the lazy dog " * 40], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
