"""Chats to token ids without letting the text of a message forge a control token.

Rendering a chat with its template and tokenizing the whole text would read `<|user|>` written inside a
message (by the model, in an earlier attempt) as the control token itself: a forged turn in the next
attempt's prompt and in the ids PPO trains on. `encode_chat` tokenizes what the template writes with its
special tokens, and each message's content with special tokens split into plain text (the tokenizer's
`split_special_tokens`). A chat whose messages hold no special token's text is tokenized in one piece, as
before, so its ids do not change. (Added tokens that are not special stay matched, as the tokenizer does.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_STAND_IN = "\ue000{}\ue001"  # private-use characters: where message i's content goes in the rendered template
_STAND_IN_RE = re.compile("\ue000(\\d+)\ue001")


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered by the tokenizer's chat template (the template adds its own bos)."""
    def render(chat: Sequence[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(list(chat), add_generation_prompt=add_generation_prompt, tokenize=False)

    specials = [t for t in tokenizer.all_special_tokens if t]
    if not any(s in str(m.get("content", "")) for m in messages for s in specials):
        return tokenizer(render(messages), add_special_tokens=False)["input_ids"]
    pieces = _STAND_IN_RE.split(render([{**m, "content": _STAND_IN.format(i)} for i, m in enumerate(messages)]))
    ids: list[int] = []
    for k, piece in enumerate(pieces):  # template text and message numbers alternate
        if k % 2:
            ids += tokenizer(str(messages[int(piece)]["content"]), add_special_tokens=False,
                             split_special_tokens=True)["input_ids"]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids
