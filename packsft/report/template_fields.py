"""What a chat template reads, from its jinja source (no rendering): the message fields it looks at, whether it
reads `tools`, and the kwargs it takes (`enable_thinking`, ...), for `packsft template`.

    {% for m in messages %}{{ m.reasoning_content }}      message field  reasoning_content
    {% if tools %}                                        reads tools
    {% if enable_thinking is false %}                     kwarg          enable_thinking

A name counts as a message where it is `messages`, an element or slice of it, a filter over it, or a loop or
`set` variable bound to one of those; a field is an attribute or string key of such a name (`m.content`,
`m['tool_calls']`, `'thinking' in m`). Kwargs are the names the template never assigns and transformers does
not pass itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packsft.render.chat.sandbox import template_environment

# What transformers passes to every template besides the special tokens (`bos_token`, ...) and kwargs.
PASSED = frozenset({"messages", "tools", "documents", "add_generation_prompt", "raise_exception", "strftime_now"})


@dataclass(frozen=True)
class TemplateFields:
    message_fields: tuple[str, ...]  # sorted
    reads_tools: bool
    kwargs: tuple[str, ...]  # sorted: undeclared names the caller may pass (--template-kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"message_fields": list(self.message_fields), "reads_tools": self.reads_tools,
                "kwargs": list(self.kwargs)}


def _environment() -> Any:
    """The environment templates render in (its `{% generation %}` tag and loop controls), so every template
    transformers renders parses here too."""
    return template_environment()


def template_fields(source: str, special_tokens: tuple[str, ...] = ()) -> TemplateFields:
    """The fields, tools and kwargs a chat template's source reads.

    Args:
        special_tokens: names transformers passes besides PASSED (the special-tokens map's keys: `bos_token`, ...).
    """
    from jinja2 import meta, nodes

    tree = _environment().parse(source)
    messages = _message_names(tree, nodes)
    fields: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Compare, nodes.Call)):
        fields.update(_field_of(node, messages, nodes))
    fields.discard("get")  # m.get('x') reads x (found as a Call)
    # A name the template assigns is its own, unless it asks whether the caller defined it (a kwarg with a default,
    # as Llama 3.1's `tools_in_user_message`).
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    assigned |= {m.name for m in tree.find_all(nodes.Macro)}
    guarded = {t.node.name for t in tree.find_all(nodes.Test) if t.name in ("defined", "undefined")
               and isinstance(t.node, nodes.Name)}
    undeclared = meta.find_undeclared_variables(tree)
    kwargs = undeclared - PASSED - set(special_tokens) - (assigned - guarded)
    return TemplateFields(tuple(sorted(fields)), "tools" in undeclared, tuple(sorted(kwargs)))


def _message_names(tree: Any, nodes: Any) -> set[str]:
    """Names bound to messages (`messages` itself, loop and `set` variables over it), to a fixed point."""
    names = {"messages"}
    while True:
        found = set(names)
        for loop in tree.find_all(nodes.For):
            if _is_messages(loop.iter, found, nodes):
                found |= {n.name for n in loop.target.find_all(nodes.Name)} | (
                    {loop.target.name} if isinstance(loop.target, nodes.Name) else set())
        for assign in tree.find_all(nodes.Assign):
            if isinstance(assign.target, nodes.Name) and _is_messages(assign.node, found, nodes):
                found.add(assign.target.name)
        if found == names:
            return names
        names = found


def _is_messages(expr: Any, names: set[str], nodes: Any) -> bool:
    """True for an expression that is a message or a list of them (never a field of one)."""
    if isinstance(expr, nodes.Name):
        return expr.name in names
    if isinstance(expr, nodes.Getitem):  # messages[0], messages[1:], messages[i]: not m['content']
        key = expr.arg
        return not (isinstance(key, nodes.Const) and isinstance(key.value, str)) and _is_messages(expr.node, names, nodes)
    if isinstance(expr, nodes.Filter):
        return expr.node is not None and _is_messages(expr.node, names, nodes)
    if isinstance(expr, nodes.CondExpr):
        return _is_messages(expr.expr1, names, nodes) or (expr.expr2 is not None and _is_messages(expr.expr2, names, nodes))
    return False


def _field_of(node: Any, names: set[str], nodes: Any) -> list[str]:
    """The message field a Getattr, string Getitem, `m.get('x')` or `'x' in message` test reads, if any."""
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.node.attr == "get":
        first = node.args[0] if node.args else None
        if isinstance(first, nodes.Const) and isinstance(first.value, str) and _is_messages(node.node.node, names, nodes):
            return [first.value]
        return []
    if isinstance(node, nodes.Getattr) and _is_messages(node.node, names, nodes):
        return [node.attr]
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return [node.arg.value] if _is_messages(node.node, names, nodes) else []
    if isinstance(node, nodes.Compare) and isinstance(node.expr, nodes.Const) and isinstance(node.expr.value, str):
        return [node.expr.value for op in node.ops if op.op in ("in", "notin") and _is_messages(op.expr, names, nodes)]
    return []
