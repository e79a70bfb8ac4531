"""`--template chat`: render each record with the tokenizer's own chat template and train what the model generates.

Grouped by the question each module answers:

    renderer.py   ChatRenderer, render_chat: records -> RenderedBatch (the Renderer of render/batch.py)
    template      what a template does, found once per template and proven before a tokenizer packs:
      jinja.py      render a template as `apply_chat_template` does, without the transformers tokenizer
      sandbox.py    packsft's copy of the environment `apply_chat_template` renders in
      facts.py      what it renders around any conversation: heads, generation prompts, trailer, skeleton layouts
      kept.py       skeleton layouts kept across packs in the tokenizer cache, used where they still render alike
      probes.py     probe records where a chat path that differs from transformers' would differ first
      proof.py      prove a tokenizer's chat path against `apply_chat_template`; the ids verify reads rows by
    layout and spans, per record:
      layout.py     where each message and each generated span lies in a rendering (prefix renderings, stop
                    tokens, the template's trailer)
      skeleton.py   a layout analysed once per conversation shape, spliced with each record's strings
      trace.py      a skeleton's rendering with what the template read of its strings, replayed per record
      flags.py      the train flags and message spans of one rendered record: the mask, computed here only
    encoding:
      encode.py     tokenize renderings (HF or fast encoder): template specials special, record strings plain
"""

from packsft.render.chat.renderer import ChatRenderer, render_chat

__all__ = ["ChatRenderer", "render_chat"]
