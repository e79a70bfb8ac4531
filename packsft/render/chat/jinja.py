"""Render a chat template exactly as transformers' `apply_chat_template` does, without its tokenizer.

`render_jinja_template` is what `apply_chat_template` calls; importing transformers' tokenizer classes imports
torch (seconds per worker), its chat-template utilities do not. proof.py checks the result against
`apply_chat_template` on probe records before a tokenizer packs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from packsft.errors import MissingDependencyError
from packsft.render.chat.trace import Trace, Tracer, trace, traced_template
from packsft.render.tokenizer import PackTokenizer


def require_jinja() -> None:
    """Fail at start-up, naming the install, where the chat path cannot run (it is no fault of any record)."""
    try:
        import jinja2
    except ImportError:
        raise MissingDependencyError("--template chat renders the tokenizer's chat template with jinja2, which is not "
                                     "installed: pip install 'jinja2>=3.1' (packsft declares it; reinstall packsft)") from None
    major, minor = (int(part) for part in jinja2.__version__.split(".")[:2])
    if (major, minor) < (3, 1):
        raise MissingDependencyError(f"--template chat needs jinja2 3.1 or later (transformers' chat templates); "
                                     f"{jinja2.__version__} is installed: pip install -U 'jinja2>=3.1'")


def jinja_renderer(tokenizer: PackTokenizer) -> Callable[[list[dict[str, Any]], Any, bool, dict[str, Any]], str]:
    """A function rendering one conversation exactly as `hf.apply_chat_template(messages, tools=tools,
    add_generation_prompt=prompt, tokenize=False, **kwargs)`."""
    template = tokenizer.chat_template
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # a transformers without it: its tokenizer renders (and imports torch)
        render_jinja_template = None
    if not template or render_jinja_template is None or tokenizer.chat_renderer == "hf":
        return lambda messages, tools, prompt, kwargs: tokenizer.hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=prompt, tokenize=False, **kwargs)
    special = dict(tokenizer.special_tokens_map)
    direct = _compiled_renderer()

    def render(messages: list[dict[str, Any]], tools: Any, prompt: bool, kwargs: dict[str, Any]) -> str:
        chosen = _chosen(template, tools)
        if direct is not None:
            return direct(chosen, messages, tools, prompt, {**special, **kwargs})
        rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=chosen,
                                            add_generation_prompt=prompt, **{**special, **kwargs})
        return rendered[0]

    return render


def _chosen(template: str | dict[str, str], tools: Any) -> Any:
    """The template transformers renders with: of several named ones, "tool_use" where there are tools."""
    if isinstance(template, dict):
        return template.get("tool_use") if tools is not None and "tool_use" in template else template.get("default")
    return template


def skeleton_tracer(tokenizer: PackTokenizer) -> Tracer | None:
    """A function rendering a skeleton as `jinja_renderer`'s does, through a tracing environment (trace.py), with what
    the template read of its placeholders; None where transformers renders otherwise than `_compiled_renderer`."""
    template = tokenizer.chat_template
    if not template or tokenizer.chat_renderer == "hf":
        return None
    try:
        from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
    except ImportError:
        return None
    special = dict(tokenizer.special_tokens_map)

    def render(messages: list[dict[str, Any]], tools: Any, prompt: bool, kwargs: dict[str, Any]) -> Trace | None:
        chosen = _chosen(template, tools)
        traced = _traced_template(chosen) if isinstance(chosen, str) else None
        if traced is None:
            return None
        return trace(traced, messages=_alias_reasoning_fields(_plain_template_data(messages)),
                     tools=_plain_template_data(tools), documents=None, add_generation_prompt=prompt,
                     **_plain_template_data({**special, **kwargs}))

    return render


@functools.lru_cache(maxsize=16)
def _traced_template(source: str) -> Any:
    """The tracing template of `source`, compiled once per process (a worker renders many units); None where this
    transformers compiles templates otherwise."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    return traced_template(_compile_jinja_template(source).environment, source)


def _compiled_renderer() -> Callable[[str, list[dict[str, Any]], Any, bool, dict[str, Any]], str] | None:
    """`render_jinja_template`'s own steps for one conversation without its per-call overhead (~20% of a render):
    the compiled template (cached by transformers), its plain-data conversion of everything the template sees
    (the sandbox's guard) and its reasoning-field aliases. None where this transformers names them otherwise;
    the chat proof compares the result with `apply_chat_template` either way."""
    try:
        from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
    except ImportError:
        return None

    def render(template: str, messages: list[dict[str, Any]], tools: Any, prompt: bool, kwargs: dict[str, Any]) -> str:
        return _quick_template(template).render(
            messages=_alias_reasoning_fields(_plain_template_data(messages)), tools=_plain_template_data(tools),
            documents=None, add_generation_prompt=prompt, **_plain_template_data(kwargs))

    return render


@functools.lru_cache(maxsize=16)
def _quick_template(source: str) -> Any:
    """transformers' compiled template of `source`, in an overlay of its sandbox whose attribute checks are
    remembered (`_remembering_sandbox`); transformers' own template where its environment is not jinja's immutable
    sandbox, whose checks this is known to repeat."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils.chat_template_utils import _compile_jinja_template

    compiled = _compile_jinja_template(source)
    if type(compiled.environment) is not ImmutableSandboxedEnvironment:
        return compiled
    return _remembering_sandbox(compiled.environment).from_string(source)


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
