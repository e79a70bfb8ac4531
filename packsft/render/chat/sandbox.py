"""The jinja environment chat templates render in, as `apply_chat_template` builds it, without importing transformers.

Importing transformers' chat-template utilities imports transformers itself (0.5-0.9 s a process on 2 cores: its
lazy import table, huggingface_hub); every worker of a `--template chat` pack paid it before its first unit. The
environment is small and stable, so packsft builds its own from jinja2 alone:

    jinja's immutable sandbox, trim_blocks, lstrip_blocks, loop controls, a `{% generation %}` tag that renders its body,
    tojson without HTML escaping (ensure_ascii, indent, separators, sort_keys as keywords), raise_exception,
    strftime_now, and dict/namespace that refuse names starting with "_"

and hands the template what transformers does: plain JSON data (`template_data`) and a message's reasoning under the
names templates read it by (`with_reasoning_aliases`). Whether this renders exactly as the installed transformers is
never assumed: proof.py compares it with `apply_chat_template` on the probe records, per tokenizer and library
versions, and a tokenizer whose renderings differ renders with `apply_chat_template` itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

# Bumped when the environment or the data a template sees changes, so that cached chat proofs (proof.py) are made again.
ENVIRONMENT_VERSION = 1
# A message's reasoning, by the names datasets and templates use; the first is the one most templates read.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@functools.lru_cache(maxsize=1)
def template_environment() -> Any:
    """The sandboxed environment `apply_chat_template` compiles templates in (one a process)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_generation_tag(), jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_SafeDict(),
                       namespace=_safe_namespace())
    return env


@functools.lru_cache(maxsize=16)
def compiled_template(source: str) -> Any:
    """`source` compiled in `template_environment()`, once a process."""
    return template_environment().from_string(source)


def template_data(value: Any) -> Any:
    """`value` rebuilt from plain JSON types, as transformers hands a template everything it sees: subclasses of str,
    int and float become the base type, mappings dicts, dataclasses and pydantic models their fields, numpy scalars
    their value, and anything else a placeholder naming its type ("<ndarray>")."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is float or kind is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {template_data(key): template_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [template_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(template_data(item) for item in value)
    if isinstance(value, np.generic):  # np.bool_(False) would otherwise be a truthy placeholder
        return template_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: template_data(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return template_data(value.model_dump())
    return f"<{kind.__name__}>"


def with_reasoning_aliases(messages: list[Any]) -> list[Any]:
    """The messages with their reasoning (the first of REASONING_FIELDS that is set) also under "thinking" (first, for
    templates that read it there) and "reasoning_content" (last): a template finds it by either name."""
    aliased = []
    for message in messages:
        if isinstance(message, dict):
            reasoning = next((message[name] for name in REASONING_FIELDS if message.get(name) is not None), None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """JSON as templates expect it: no HTML escaping (jinja's own filter escapes <, >, &, ')."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _SafeDict:
    """`dict(...)` and `dict.fromkeys(...)` in a template, without the type itself (its attributes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def _safe_namespace() -> type:
    """jinja's `namespace`, refusing attribute names that start with "_" (a way into the interpreter's internals)."""
    from jinja2.exceptions import SecurityError
    from jinja2.utils import Namespace

    def check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got "
                                f"{name!r}. Please rename the attribute.")

    class SafeNamespace(Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # jinja's signature: `namespace(self=...)` stays a field
            self, rest = args[0], args[1:]
            fields = dict(*rest, **kwargs)
            for name in fields:
                check(name)
            Namespace.__init__(self, fields)

        def __setitem__(self, name: str, value: Any) -> None:
            check(name)
            Namespace.__setitem__(self, name, value)

    return SafeNamespace


def _generation_tag() -> type:
    """The `{% generation %}...{% endgeneration %}` tag (templates mark what the model generates with it): rendered as
    its body; where a rendering's generated spans lie, layout.py finds by itself."""
    import jinja2.nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> Any:
            return caller()

    return GenerationTag
