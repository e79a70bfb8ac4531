"""Traced skeletons: a skeleton rendered once with every decision the template takes on the record's strings written
down, so that a record of that shape is its skeleton with the record's strings spliced in, without rendering it.

    skeleton:  {"role": "assistant", "content": "\\ue0001\\ue001"}   trace:   '</think>' in «1»           -> False
    record:    {"role": "assistant", "content": "Sure, here ..."}  replay:  '</think>' in "Sure, here ..." -> False
               the same answers: the template takes the same path, so its rendering is the spliced skeleton

The skeleton renders through an overlay of transformers' own template environment whose hooks see every operation
that reads a string's characters: comparisons, slices, loops over a string, method calls, filters, tests and
arithmetic (the template's syntax tree is rewritten so that comparisons, slices, loops and output pass through
filters of ours; calls, item access and arithmetic go through the sandbox's own hooks). What only moves strings
around gives the spliced result whatever the strings are: concatenation and output, storing them, handing them back
from a list or a dict, truthiness (placeholders stand for non-empty strings only: skeleton.py leaves empty ones
as they are). Every other operation on a placeholder, or on text holding one, is written down with its arguments
and result (`Trace.ops`), and a record of that shape replays it on its own strings: where any result differs, or
an operation fails, the record is rendered itself. What a trace cannot replay exactly (a generator handed on, a
filter reading the template context, a string cut inside a placeholder, a call of anything else) leaves the
shape untraced, and its records are rendered as before.
"""

from __future__ import annotations

import functools
import operator
import types
from collections.abc import Callable, ItemsView, KeysView, Mapping, ValuesView
from typing import Any

from packsft.render.chat.layout import HOLE_PATTERN

# A written-down operation: function, arguments, keyword arguments, the result it gave on the skeleton.
Op = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any]
# Renders a skeleton (messages, tools, add_generation_prompt, kwargs) with its trace: jinja.skeleton_tracer.
Tracer = Callable[[list[dict[str, Any]], Any, bool, dict[str, Any]], "Trace | None"]

HOLE_MARKS = ("\ue000", "\ue001")
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
    "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}
# Filters that hand back a list's, tuple's or dict's own items, or count them: they move strings, never read them.
MOVING_FILTERS = frozenset({"length", "count", "first", "last", "list", "reverse", "items", "batch", "slice"})
# Tests that read only a value's type or definedness.
TYPE_TESTS = frozenset({"defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number",
                        "integer", "float", "boolean", "true", "false", "callable", "escaped"})
# Globals whose result follows from their arguments alone; any other (strftime_now, lipsum) is replayed per record.
PURE_GLOBALS = frozenset({"range", "dict", "cycler", "joiner", "namespace", "raise_exception"})
# Of those, the ones that only store what they are given (a namespace, a dict, a cycler of strings).
STORING_GLOBALS = frozenset({"dict", "cycler", "joiner", "namespace"})
DICT_READS = frozenset({"get", "items", "keys", "values"})


class Untraceable(Exception):
    """The template did something with a record's string that a trace cannot replay exactly."""


class Trace:
    """A skeleton's rendering and the operations on its placeholders that a record of its shape must answer alike."""

    def __init__(self, text: str, ops: tuple[Op, ...]) -> None:
        self.text, self.ops = text, ops
        # Per op: each argument and the result as (placeholder index, or -1 to fill in, or -2 as it is, value).
        self._steps = [(function, [_slot(arg) for arg in args], kwargs, _slot(result))
                       for function, args, kwargs, result in ops]

    def replays(self, values: list[str]) -> bool:
        """Whether every operation gives, on the record's strings (`values`, placeholder i standing for values[i]),
        the skeleton's result with those strings in place."""
        for function, args, kwargs, result in self._steps:
            try:
                found = function(*[_value(arg, values) for arg in args], **filled(kwargs, values))
            except Exception:
                return False
            if not _same(found, _value(result, values)):
                return False
        return True


def _slot(value: Any) -> tuple[int, Any]:
    """(i, value) where the value is placeholder i alone, (-2, value) where it holds none, else (-1, value)."""
    whole = HOLE_PATTERN.fullmatch(value) if isinstance(value, str) else None
    return (int(whole.group(1)), value) if whole is not None else (-1 if holed(value) else -2, value)


def _value(slot: tuple[int, Any], values: list[str]) -> Any:
    index, value = slot
    return values[index] if index >= 0 else value if index == -2 else filled(value, values)


def filled(value: Any, values: list[str] | Mapping[int, str]) -> Any:
    """The value with every placeholder replaced by its string (placeholder i by values[i])."""
    if isinstance(value, str):
        if HOLE_MARKS[0] not in value:
            return value
        return HOLE_PATTERN.sub(lambda match: values[int(match.group(1))], value)
    if type(value) in (list, tuple):
        return type(value)(filled(item, values) for item in value)
    if type(value) is dict:
        return {filled(key, values): filled(item, values) for key, item in value.items()}
    return value


def holed(value: Any) -> bool:
    """Whether the value is or may hold a string with a placeholder mark in it: any object but plain data, an
    undefined value and a macro (whose body is traced as it runs) may, such as an iterator over a list of them."""
    if isinstance(value, str):
        return HOLE_MARKS[0] in value or HOLE_MARKS[1] in value
    if isinstance(value, (list, tuple, set, frozenset, KeysView, ValuesView)):
        return any(map(holed, value))
    if isinstance(value, (Mapping, ItemsView)):
        return any(holed(key) or holed(item) for key, item in (value.items() if isinstance(value, Mapping) else value))
    return not isinstance(value, (type(None), bool, int, float)) and not isinstance(value, _jinja_inert())


@functools.cache
def _jinja_inert() -> tuple[type, ...]:
    """jinja2's undefined values and macros (imported on first trace: the role-token path never imports jinja2)."""
    from jinja2.runtime import Macro, Undefined

    return Undefined, Macro


def _same(found: Any, expected: Any) -> bool:
    if type(found) is not type(expected):
        return False
    if type(found) in (list, tuple):
        return len(found) == len(expected) and all(map(_same, found, expected))
    if type(found) is dict:
        return found.keys() == expected.keys() and all(_same(found[key], expected[key]) for key in found)
    return bool(found == expected)


def _plain(value: Any) -> bool:
    """Plain data whose placeholders are whole: what an operation may take and give to be replayed."""
    if value is None or type(value) in (int, float, bool):
        return True
    if type(value) is str:
        rest = HOLE_PATTERN.sub("", value) if HOLE_MARKS[0] in value else value
        return HOLE_MARKS[0] not in rest and HOLE_MARKS[1] not in rest
    if type(value) in (list, tuple):
        return all(map(_plain, value))
    if type(value) is dict:
        return all(_plain(key) and _plain(item) for key, item in value.items())
    return False


class TracingEnvironment:
    """Mixed into the class of transformers' template environment (`traced_template`): the sandbox's hooks for
    calls, item access and arithmetic, writing down what reads a placeholder into `ops`."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    intercepted_unops = frozenset({"+", "-"})
    ops: list[Op]
    impure: tuple[Any, ...]
    storing: tuple[Any, ...]

    def record(self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if not (_plain(args) and _plain(kwargs) and _plain(result)):
            raise Untraceable(getattr(function, "__name__", repr(function)))
        self.ops.append((function, args, kwargs, result))

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        result = super().call_binop(context, op, left, right)  # type: ignore[misc]
        if (holed(left) or holed(right)) and not _moves(op, left, right):
            self.record(self.binop_table[op], (left, right), {}, result)  # type: ignore[attr-defined]
        return result

    def call_unop(self, context: Any, op: str, arg: Any) -> Any:
        result = super().call_unop(context, op, arg)  # type: ignore[misc]
        if holed(arg):
            self.record(self.unop_table[op], (arg,), {}, result)  # type: ignore[attr-defined]
        return result

    def getitem(self, obj: Any, argument: Any) -> Any:
        result = super().getitem(obj, argument)  # type: ignore[misc]
        if holed(argument) or (isinstance(obj, str) and holed(obj)):
            self.record(super().getitem, (obj, argument), {}, result)  # type: ignore[misc]
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - as the sandbox names it
        result = super().call(__context, __obj, *args, **kwargs)  # type: ignore[misc]
        data = {key: value for key, value in kwargs.items() if key not in ("_loop_vars", "_block_vars")}
        # The data a method belongs to (str.format's sandbox wrapper wraps it); a method of another object (a loop,
        # a cycler, an extension) reads nothing of its own that a placeholder went into but through its arguments.
        owner = getattr(__obj, "__self__", getattr(getattr(__obj, "__wrapped__", None), "__self__", None))
        if isinstance(__obj, _jinja_inert()[1]):  # a macro: its body is traced as it runs
            return result
        if holed(args) or holed(data) or (type(owner) in (str, list, tuple, dict) and holed(owner)):
            if isinstance(__obj, types.BuiltinMethodType) and type(owner) in (str, list, tuple) \
                    and __obj.__name__ not in ("format", "format_map"):
                __self.record(getattr(type(owner), __obj.__name__), (owner, *args), data, result)
            elif type(owner) is dict and getattr(__obj, "__name__", "") in DICT_READS and not holed((args, data)):
                pass  # the dict's own items, handed back
            elif not any(__obj is function for function in __self.storing):
                raise Untraceable(getattr(__obj, "__name__", repr(__obj)))
        elif any(__obj is function for function in __self.impure):
            __self.record(__obj, args, data, result)
        return result


def _moves(op: str, left: Any, right: Any) -> bool:
    """Whether a binary operation only joins or repeats strings (or lists) as they are."""
    sequences = (str, list, tuple)
    if op == "+":
        return type(left) is type(right) and type(left) in sequences
    if op == "*":
        return (type(left) in sequences and type(right) is int) or (type(right) in sequences and type(left) is int)
    return False


def _hooked_filter(env: Any, name: str, function: Callable[..., Any], is_test: bool) -> Callable[..., Any]:
    from jinja2.utils import _PassArg

    passed = _PassArg.from_obj(function)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        lead, data = (args[:1], args[1:]) if passed is not None else ((), args)
        if holed(data) or holed(kwargs):
            if is_test and name in TYPE_TESTS or not is_test and name in ("default", "d"):
                return result
            if not is_test and name in MOVING_FILTERS and type(data[0]) in (list, tuple, dict) \
                    and not holed((data[1:], kwargs)):
                return result
            if passed is _PassArg.context or name == "sameas":
                raise Untraceable(name)
            env.record(functools.partial(function, *lead) if lead else function, data, kwargs, result)
        elif name == "random":
            raise Untraceable(name)
        return result

    if passed is not None:
        hooked.jinja_pass_arg = passed  # type: ignore[attr-defined]
    return hooked


def _compare(left: Any, op: str, right: Any) -> Any:
    return COMPARISONS[op](left, right)


def _cut(value: Any, start: Any, stop: Any, step: Any) -> Any:
    return value[start:stop:step]


def _our_filters(env: Any) -> dict[str, Callable[..., Any]]:
    """The filters the rewritten syntax tree calls (`_Hooks`)."""

    def compare(left: Any, op: str, right: Any) -> Any:
        result = _compare(left, op, right)
        if holed(left) or holed(right):
            env.record(_compare, (left, op, right), {}, result)
        return result

    def cut(value: Any, start: Any, stop: Any, step: Any) -> Any:
        result = _cut(value, start, stop, step)
        if isinstance(value, str) and holed(value):
            env.record(_cut, (value, start, stop, step), {}, result)
        return result

    def not_a_holed_string(value: Any) -> Any:  # a loop over a string's characters, *args, a, b = string
        if isinstance(value, str) and holed(value):
            raise Untraceable("a string taken apart")
        return value

    def no_holed_strings(value: Any) -> Any:  # a loop that unpacks each item (for a, b in ...)
        items = value if isinstance(value, (list, tuple, KeysView, ValuesView, ItemsView)) else [value]
        for item in items:
            if holed(item) and not isinstance(item, (list, tuple)):
                raise Untraceable("a string taken apart")
        return value

    def shown(value: Any) -> Any:  # output and ~ turn a non-string into text: a list's repr escapes its strings
        if not isinstance(value, str) and holed(value):
            raise Untraceable("output of a non-string")
        return value

    def key(value: Any) -> Any:
        if holed(value):
            raise Untraceable("a string as a dict key")
        return value

    return {"packsft_compare": compare, "packsft_cut": cut, "packsft_whole": not_a_holed_string,
            "packsft_unpacked": no_holed_strings, "packsft_shown": shown, "packsft_key": key}


def _hooks() -> Any:
    """A syntax-tree rewriter: what reads strings outside the sandbox's hooks calls our filters instead (`_hooked`)."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    class Hooks(NodeTransformer):
        def generic_visit(self, node: Any, *args: Any, **kwargs: Any) -> Any:
            return _hooked(super().generic_visit(node, *args, **kwargs), nodes)

    return Hooks()


def _hooked(node: Any, nodes: Any) -> Any:
    """The node (its children already rewritten) with what reads strings through our filters (`_our_filters`)."""

    def through(expr: Any, name: str, *args: Any) -> Any:
        return nodes.Filter(expr, name, list(args), [], None, None, lineno=expr.lineno)

    if isinstance(node, nodes.Compare):
        if len(node.ops) != 1:  # a chain evaluates lazily; ours would not
            raise Untraceable("chained comparison")
        return through(node.expr, "packsft_compare", nodes.Const(node.ops[0].op), node.ops[0].expr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):  # Python's own slicing, not getitem
        bounds = [part if part is not None else nodes.Const(None) for part in (node.arg.start, node.arg.stop,
                                                                               node.arg.step)]
        return through(node.node, "packsft_cut", *bounds)
    if isinstance(node, nodes.For):
        node.iter = through(node.iter, "packsft_unpacked" if isinstance(node.target, nodes.Tuple) else "packsft_whole")
    elif isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Tuple):
        node.node = through(node.node, "packsft_whole")
    elif isinstance(node, (nodes.Call, nodes.Filter, nodes.Test)) and node.dyn_args is not None:
        node.dyn_args = through(node.dyn_args, "packsft_whole")  # f(*string) passes its characters
    elif isinstance(node, nodes.Output):
        node.nodes = [child if isinstance(child, nodes.TemplateData) else through(child, "packsft_shown")
                      for child in node.nodes]
    elif isinstance(node, nodes.Concat):
        node.nodes = [through(child, "packsft_shown") for child in node.nodes]
    elif isinstance(node, nodes.Pair):
        node.key = through(node.key, "packsft_key")
    elif isinstance(node, nodes.Template):
        # Other templates are not traced; an autoescape block escapes output outside the hooks.
        for kind in (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport, nodes.EvalContextModifier):
            if node.find(kind) is not None:
                raise Untraceable(kind.__name__)
    return node


def traced_template(environment: Any, source: str) -> Any | None:
    """The template `source` in an overlay of `environment` (transformers' compiled-template environment) that
    traces (TracingEnvironment); None where it cannot (a template that includes others, a chained comparison,
    autoescaping or a finalize function, placeholder marks in the template's own text)."""
    if any(mark in source for mark in HOLE_MARKS) or environment.autoescape or environment.finalize is not None:
        return None
    env = environment.overlay()
    env.__class__ = type(f"Tracing{type(environment).__name__}", (TracingEnvironment, type(environment)), {})
    env.filters = {name: _hooked_filter(env, name, function, False) for name, function in environment.filters.items()}
    env.filters.update(_our_filters(env))
    env.tests = {name: _hooked_filter(env, name, function, True) for name, function in environment.tests.items()}
    env.globals = dict(environment.globals)
    env.impure = tuple(f for name, f in env.globals.items() if callable(f) and name not in PURE_GLOBALS)
    env.storing = tuple(f for name, f in env.globals.items() if name in STORING_GLOBALS)
    env.ops = []
    try:
        tree = _hooks().visit(env.parse(source))
        tree.set_environment(env)
        return env.from_string(tree)
    except Untraceable:
        return None


def trace(template: Any, **context: Any) -> Trace | None:
    """The rendering of a skeleton by a `traced_template` and what it read of the placeholders; None where the
    template refuses the skeleton or reads a placeholder in a way a trace cannot replay."""
    env = template.environment
    env.ops = []
    try:
        text = template.render(**context)
    except Exception:  # Untraceable, or the template refuses the skeleton
        return None
    finally:
        ops, env.ops = tuple(env.ops), []
    return Trace(text, ops) if _plain(text) else None  # a placeholder's marks apart: taken apart somewhere
