"""Tiny random models of the real architectures, and a small tokenizer built here, so tests need no hub.

Used by the test suite and by anyone who wants to try an exporter in seconds.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "You extract facts about the speakers. Reply with JSON: {\"facts\": [\"...\"]}.",
    "{\"memory\": [{\"id\": \"0\", \"text\": \"Caroline likes painting\", \"event\": \"ADD\", \"old_memory\": \"\"}]}",
    "ADD UPDATE DELETE NONE memory facts question answer date session conversation",
    "Caroline went to a support group on 7 May 2023. Melanie painted a sunrise with her kids.",
    "What did Caroline research? Adoption agencies. When did Melanie run a charity race?",
    "0123456789 January February March April May June July August September October November December",
    "the a an of to in on at for with by from and or but not is are was were be been I you he she they we",
]


def build_tokenizer(out: Path, vocab_size: int = 600):
    """Train a byte-level BPE tokenizer with ChatML special tokens and save it as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a tiny random model of `arch` (llama or qwen2) with a tokenizer into `out`."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out)
    tok = build_tokenizer(out)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    common.update(overrides)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = cls(**common)
    if arch == "llama":
        config.rope_parameters = {"rope_type": "default", "rope_theta": 100000.0}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(out)
    return out


def build_adapter(
    base_dir: Path,
    out: Path,
    seed: int,
    rank: int = 4,
    alpha: int = 8,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
) -> Path:
    """Save a PEFT LoRA adapter for `base_dir` with random, non-zero A and B (so it changes outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
    peft_model.save_pretrained(out)
    return Path(out)


def build_adapters(base_dir: Path, out_dir: Path, names=("extract", "mem_update", "answer"), **kw) -> Path:
    """One random adapter per operation, in `out_dir/<name>/` (the layout the toolkit expects)."""
    for i, name in enumerate(names):
        build_adapter(base_dir, Path(out_dir) / name, seed=100 + i, **kw)
    return Path(out_dir)


def teach_adapter(
    base_dir: Path, out: Path, examples: list[tuple[list[int], list[int]]], steps: int = 200, rank: int = 8, seed: int = 0
) -> Path:
    """Train a LoRA adapter until the tiny model reproduces `target_ids` after each `prompt_ids` greedily.

    This gives the pipeline tests a real model that emits well-formed memory operations, so they exercise
    ids, updates and history on genuine generations rather than on canned strings.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batches = []
    for prompt, target in examples:
        ids = torch.tensor([prompt + target])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        batches.append((ids, labels))
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return Path(out)


BERT_WORDS = ("caroline melanie guitar band boston cat luna sister anna visit moving plays started learning job "
              "friday june new adopted called name instrument what is the a in to of her every not after all").split()


def build_bert(out: Path) -> Path:
    """A random 2-layer BERT with a WordPiece tokenizer built here, saved in sentence-transformers layout."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The vocabulary is written out rather than trained: WordPieceTrainer orders equally frequent pieces by hash,
    # so a trained one (and every embedding the tests compare) would change from run to run.
    chars = string.ascii_lowercase + string.digits
    pieces = dict.fromkeys([*specials, *string.punctuation, *chars, *(f"##{c}" for c in chars), *sorted(BERT_WORDS)])
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(out)
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return out
