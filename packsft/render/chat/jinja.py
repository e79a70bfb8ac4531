"""Render a chat template exactly as transformers' `apply_chat_template` does, without transformers.

Templates are compiled in packsft's own copy of the environment `apply_chat_template` renders in (sandbox.py):
importing transformers' tokenizer classes imports torch (seconds per worker), and even its chat-template utilities
import transformers (0.5-0.9 s). proof.py checks the result against `apply_chat_template` on probe records before a
tokenizer packs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from packsft.errors import MissingDependencyError
from packsft.render.chat.sandbox import template_data, template_environment, with_reasoning_aliases
from packsft.render.chat.trace import Trace, Tracer, trace, traced_template
from packsft.render.tokenizer import PackTokenizer


def require_jinja() -> None:
    """Fail at start-up, naming the install, where the chat path cannot run (it is no fault of any record)."""
    try:
        import jinja2
    except ImportError:
        raise MissingDependencyError("--template chat renders the tokenizer's chat template with jinja2, which is not "
                                     "installed: pip install 'jinja2>=3.1.6' (packsft declares it; reinstall packsft)") from None
    release = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if release < (3, 1, 6):
        raise MissingDependencyError(f"--template chat needs jinja2 3.1.6 or later (as transformers does: earlier ones "
                                     f"let a template escape its sandbox); {jinja2.__version__} is installed: "
                                     "pip install -U 'jinja2>=3.1.6'")


def jinja_renderer(tokenizer: PackTokenizer) -> Callable[[list[dict[str, Any]], Any, bool, dict[str, Any]], str]:
    """A function rendering one conversation exactly as `hf.apply_chat_template(messages, tools=tools,
    add_generation_prompt=prompt, tokenize=False, **kwargs)`: in packsft's own copy of its environment (sandbox.py),
    or by `apply_chat_template` itself where the chat proof found them to differ (`chat_renderer == "hf"`).

    Its messages, tools and kwargs are plain data already (`template_data`, which transformers applies on every call):
    ChatRenderer converts a record once, and its layout renders it and its variants many times (about 12% of a unit
    of tool-calling records was converting the same data again)."""
    template = tokenizer.chat_template
    if not template or tokenizer.chat_renderer == "hf":
        return lambda messages, tools, prompt, kwargs: tokenizer.hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=prompt, tokenize=False, **kwargs)
    special = template_data(dict(tokenizer.special_tokens_map))

    def render(messages: list[dict[str, Any]], tools: Any, prompt: bool, kwargs: dict[str, Any]) -> str:
        return _quick_template(_chosen(template, tools)).render(
            messages=with_reasoning_aliases(messages), tools=tools, documents=None, add_generation_prompt=prompt,
            **{**special, **kwargs})

    return render


def _chosen(template: str | dict[str, str], tools: Any) -> Any:
    """The template transformers renders with: of several named ones, "tool_use" where there are tools."""
    if isinstance(template, dict):
        return template.get("tool_use") if tools is not None and "tool_use" in template else template.get("default")
    return template


def skeleton_tracer(tokenizer: PackTokenizer) -> Tracer | None:
    """A function rendering a skeleton as `jinja_renderer`'s does (of plain data), through a tracing environment
    (trace.py), with what the template read of its placeholders; None where `apply_chat_template` renders
    (`chat_renderer == "hf"`)."""
    template = tokenizer.chat_template
    if not template or tokenizer.chat_renderer == "hf":
        return None
    special = template_data(dict(tokenizer.special_tokens_map))

    def render(messages: list[dict[str, Any]], tools: Any, prompt: bool, kwargs: dict[str, Any]) -> Trace | None:
        chosen = _chosen(template, tools)
        traced = _traced_template(chosen) if isinstance(chosen, str) else None
        if traced is None:
            return None
        return trace(traced, messages=with_reasoning_aliases(messages), tools=tools, documents=None,
                     add_generation_prompt=prompt, **{**special, **kwargs})

    return render


@functools.lru_cache(maxsize=16)
def _traced_template(source: str) -> Any:
    """The tracing template of `source`, compiled once per process (a worker renders many units); None where the
    template cannot be traced."""
    return traced_template(template_environment(), source)


@functools.lru_cache(maxsize=16)
def _quick_template(source: str) -> Any:
    """`source` compiled in an overlay of the template environment (sandbox.py) whose attribute checks are
    remembered (`_remembering_sandbox`)."""
    return _remembering_sandbox(template_environment()).from_string(source)


def _remembering_sandbox(environment: Any) -> Any:
    """An overlay of jinja's immutable sandbox that reads attributes as it does, remembering what it finds per type:
    its safety check (`is_safe_attribute`) reads only the object's type and the attribute's name (~30% of a render),
    and a message's field (`message.role`) is an item of a plain dict only after looking it up as an attribute fails
    (an exception per field read). Whether a dict has an attribute is asked of a dict, once per name."""
    env = environment.overlay()
    checked: dict[tuple[type, str], bool] = {}
    dict_attributes: dict[str, bool] = {}
    check, sandboxed_getattr, undefined = environment.is_safe_attribute, env.getattr, env.undefined

    def is_safe_attribute(obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        found = checked.get(key)
        if found is None:
            found = checked[key] = check(obj, attr, value)
        return found

    def getattr_(obj: Any, attribute: str) -> Any:
        if type(obj) is dict and type(attribute) is str:
            has = dict_attributes.get(attribute)
            if has is None:
                has = dict_attributes[attribute] = hasattr({}, attribute)
            if not has:
                try:
                    return obj[attribute]
                except KeyError:
                    return undefined(obj=obj, name=attribute)
        return sandboxed_getattr(obj, attribute)

    env.is_safe_attribute, env.getattr = is_safe_attribute, getattr_
    return env
