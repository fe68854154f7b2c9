"""The built-in character tokenizer: one token per printable ASCII character (and newline), made locally.

Built with `tokenizers` (a WordLevel model over single characters, a pre-tokenizer that isolates every
character, a Fuse decoder) and wrapped in `transformers.PreTrainedTokenizerFast`, so it saves and loads as
ordinary Hugging Face tokenizer files. The chat template starts with `<bos>` and renders each message as
`<|role|>content<|end|>`;
`<|end|>` is the eos token, so generation stops at the end of an assistant turn, and a prompt rendered with
`add_generation_prompt=True` is an exact token prefix of the prompt + completion (what TRL's completion-only
loss relies on).
"""

from __future__ import annotations

import string

PAD, UNK, BOS, END = "<pad>", "<unk>", "<bos>", "<|end|>"
ROLES: tuple[str, ...] = ("system", "user", "assistant")
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, END, *(f"<|{r}|>" for r in ROLES))
CHARACTERS: str = "\n" + "".join(chr(c) for c in range(32, 127))  # newline + printable ASCII (space..~)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TOKENIZER_SPEC = {"kind": "char", "characters": CHARACTERS, "special": list(SPECIAL_TOKENS),
                  "chat_template": CHAT_TEMPLATE}

assert set(string.printable) - set(CHARACTERS) <= set("\t\r\x0b\x0c")  # only odd whitespace is left out


def char_tokenizer(model_max_length: int = 1024):
    """A fresh `PreTrainedTokenizerFast` over `CHARACTERS` with the rlheal chat template (eos = `<|end|>`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=END,
        additional_special_tokens=[f"<|{r}|>" for r in ROLES],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="right",
    )
