"""jinja.py renders through an overlay of transformers' sandbox that remembers its attribute checks per type and reads a
message's fields as dict items at once: what it renders, and what it refuses, is what transformers' template does."""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

from packsft.render.chat.jinja import _quick_template  # noqa: E402

TEMPLATES = {
    "fields": "{% for m in messages %}{{ m.role }}:{{ m.content }}|{{ m.missing is defined }}{% endfor %}",
    "dict_methods": "{% for m in messages %}{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}"
                    "{{ m.get('content') }}{{ m.keys() | list | length }}{% endfor %}",
    "a_field_named_like_a_method": "{% for m in messages %}{{ m.items is callable }}{{ m['items'] is string }}{{ m.get('items') }}{% endfor %}",
    "string_methods": "{% for m in messages %}{{ m.content.strip().upper() }}{{ m.content.startswith('h') }}"
                      "{% endfor %}",
    "loop_and_namespace": "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                          "{{ loop.index }}{{ loop.last }}{{ ns.n }}{% endfor %}",
    "format": "{% for m in messages %}{{ '{}!'.format(m.content) }}{% endfor %}",
    "internal": "{{ messages[0].__class__ }}",
    "mro": "{{ messages.__class__.mro }}",
    "mutating": "{{ messages.append(1) }}",
    "mutating_dict": "{{ messages[0].clear() }}",
    "globals_of_a_function": "{{ raise_exception.__globals__ }}",
}
MESSAGES = [{"role": "user", "content": " hi ", "items": "field"}, {"role": "assistant", "content": "yo"}]


def _rendered(template, messages) -> str:
    try:
        return template.render(messages=[dict(m) for m in messages])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_and_refuses_as_transformers_does(name):
    source = TEMPLATES[name]
    theirs = _compile_jinja_template(source)
    assert type(theirs.environment) is ImmutableSandboxedEnvironment  # else jinja.py renders with theirs
    for _ in range(2):  # the second time from what the overlay remembered
        assert _rendered(_quick_template(source), MESSAGES) == _rendered(theirs, MESSAGES)
