"""Stage 2, render: `Conversation` batches -> `RenderedBatch` (token ids, train flags, message spans).

    tokenizer.py        load_tokenizer -> PackTokenizer (role tokens, fingerprint, encoders)
    tokenizer_cache.py  on-disk cache of resolved tokenizers and fast-encoder proofs
    encoder.py          FastEncoder: byte-level BPE content encoding, proven equal to HF's
    batch.py            the stage contract: RenderedBatch, role codes, the Renderer protocol
    renderers.py        make_renderer: the chat template where the tokenizer packs with one, else role tokens
    roles.py            RoleRenderer, render_roles: the role-token format (`--template roles`)
    chat.py             ChatRenderer, render_chat: the tokenizer's own chat template (`--template chat`)
    chat_jinja.py       render a template as `apply_chat_template` does, without the transformers tokenizer
    chat_layout.py      where each message and each generated span lies in a template's rendering
    chat_facts.py       what a template renders around any conversation (heads, prompts), skeleton layouts
    chat_flags.py       train flags and message spans of one rendered record
    chat_encode.py      tokenize chat renderings (HF or fast encoder): template specials special, contents plain
    chat_probes.py      probe records where a chat path that differs from transformers' would differ first
    chat_proof.py       prove a tokenizer's chat path against `apply_chat_template` before it packs
"""
