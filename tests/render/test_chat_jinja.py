"""jinja.py renders in packsft's own copy of transformers' template environment (sandbox.py), through an overlay that
remembers its attribute checks per type and reads a message's fields as dict items at once: what it renders, and what
it refuses, is what transformers' template does; the data a template sees is what transformers hands it."""

from __future__ import annotations

import dataclasses
import enum
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import (  # noqa: E402
    _alias_reasoning_fields,
    _compile_jinja_template,
    _plain_template_data,
)

from packsft.render.chat.jinja import _quick_template  # noqa: E402
from packsft.render.chat.sandbox import template_data, with_reasoning_aliases  # noqa: E402

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
    # The environment transformers builds: its filters, globals, tags and whitespace control.
    "tojson": "{{ messages | tojson }}|{{ {'b': '<&>', 'a': 'é'} | tojson(indent=2, sort_keys=True) }}"
              "|{{ messages[0] | tojson(ensure_ascii=True, separators=(',', ':')) }}",
    "dict": "{% set d = dict(a=1, b=[2]) %}{{ d.a }}{{ d['b'] }}{{ dict.fromkeys(['x', 'y'], 0) }}{{ dict([('k', 1)]) }}",
    "dict_internals": "{{ dict.__class__ }}",
    "namespace_underscore": "{% set ns = namespace(_hidden=1) %}{{ ns._hidden }}",
    "namespace_set_underscore": "{% set ns = namespace(a=1) %}{% set ns._b = 2 %}{{ ns.a }}",
    "namespace_named_self": "{% set ns = namespace(self=3) %}{{ ns.self }}",
    "raise_exception": "{% if messages | length > 1 %}{{ raise_exception('too many: ' ~ messages | length) }}{% endif %}",
    "strftime_now": "{{ strftime_now('%Y') | length }}",
    "generation": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
                  "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
    "loop_controls": "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.role }}{% break %}"
                     "{% endfor %}",
    "whitespace": "{% for m in messages %}\n    {% if m.role %}\n{{ m.role }}\n    {% endif %}\n{% endfor %}\n",
    "undefined": "{{ messages[0].nothing }}|{{ nothing | default('d') }}|{{ messages[5] is defined }}",
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
    for _ in range(2):  # the second time from what the overlay remembered
        assert _rendered(_quick_template(source), MESSAGES) == _rendered(theirs, MESSAGES)


class _Colour(str, enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int
    label: str


class _Model:
    def model_dump(self):
        return {"field": np.float32(0.5), "nested": (1, "a")}


DATA = [
    {"role": "user", "content": "plain", "n": 1, "f": 2.5, "b": True, "none": None},
    {"role": _Colour.RED, "content": [{"type": "text", "text": "t"}], "flag": np.bool_(False), "count": np.int64(3)},
    {"role": "assistant", "content": "a", "reasoning": "because", "extra": _Point(1, "p"), "model": _Model()},
    {"role": "assistant", "content": "a", "thinking": "t1", "reasoning_content": None, "blob": object()},
    {"role": "assistant", "content": "a", "reasoning_content": "r", "thinking": "other"},
    ("not", "a dict"),
]


def test_template_data_is_what_transformers_hands_a_template():
    mine, theirs = template_data(DATA), _plain_template_data(DATA)
    assert mine == theirs
    assert [list(m) for m in mine if isinstance(m, dict)] == [list(m) for m in theirs if isinstance(m, dict)]
    assert type(mine[1]["role"]) is str and type(mine[1]["flag"]) is bool and mine[3]["blob"] == "<object>"


def test_reasoning_aliases_are_transformers_own_in_their_order():
    plain = template_data(DATA)
    mine, theirs = with_reasoning_aliases(plain), _alias_reasoning_fields(plain)
    assert mine == theirs
    assert [list(m) for m in mine if isinstance(m, dict)] == [list(m) for m in theirs if isinstance(m, dict)]
    assert mine[2]["thinking"] == mine[2]["reasoning_content"] == "because"


def test_a_chat_render_imports_no_transformers(tmp_path):
    """The point of sandbox.py: a worker renders a template without importing transformers (0.5-0.9 s)."""
    code = (
        "import sys\n"
        "from packsft.render.chat.jinja import _quick_template\n"
        "from packsft.render.chat.sandbox import template_data, with_reasoning_aliases\n"
        "messages = with_reasoning_aliases(template_data([{'role': 'user', 'content': 'hi', 'thinking': 'x'}]))\n"
        "out = _quick_template('{% for m in messages %}{{ m.role }}:{{ m.reasoning_content }}{% endfor %}')"
        ".render(messages=messages)\n"
        "assert out == 'user:x', out\n"
        "assert not [m for m in sys.modules if m.startswith('transformers')], 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
