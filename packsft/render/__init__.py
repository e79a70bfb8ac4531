"""Stage 2, render: `Conversation` batches -> `RenderedBatch` (token ids, train flags, message spans).

    tokenizer.py        load_tokenizer -> PackTokenizer (role tokens, fingerprint, encoders)
    tokenizer_cache.py  on-disk cache of resolved tokenizers and fast-encoder proofs
    encoder.py          FastEncoder: byte-level BPE content encoding, proven equal to HF's
    flat_ids.py         gigatoken's batches as flat ids and counts, with no awkward in packsft's own processes
    rank_file.py        gigatoken built from a rank file proven to build the same tokenizer (half the build time)
    batch.py            the stage contract: RenderedBatch, role codes, the Renderer protocol
    renderers.py        make_renderer: the chat template where the tokenizer packs with one, else role tokens
    roles.py            RoleRenderer, render_roles: the role-token format (`--template roles`)
    chat/               the tokenizer's own chat template (`--template chat`): ChatRenderer, render_chat
"""
