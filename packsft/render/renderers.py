"""The renderer a run uses: the tokenizer's chat template where it packs with one (`tokenizer.template`, resolved
from `--template auto` at load), else the seed notebook's role tokens. Both implement batch.Renderer."""

from __future__ import annotations

from packsft.config import PackConfig
from packsft.render.batch import Renderer
from packsft.render.chat import ChatRenderer
from packsft.render.roles import RoleRenderer
from packsft.render.tokenizer import PackTokenizer


def make_renderer(tokenizer: PackTokenizer, config: PackConfig) -> Renderer:
    """A renderer for this tokenizer with the run's mask, unprompted policy, turns and template kwargs."""
    if tokenizer.template == "chat":
        return ChatRenderer(tokenizer, template_kwargs=config.template_kwargs_dict(), mask=config.mask,
                            unprompted=config.unprompted, turns=config.turns)
    return RoleRenderer(tokenizer, mask=config.mask, unprompted=config.unprompted)
