"""Unit tests for labd.runner.workflows.registry: resolving workflows and binding their parameters."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from labd.runner.workflows import demo
from labd.runner.workflows.params import PARAM_DEPTH
from labd.runner.workflows.registry import BUILTINS, WorkflowError, bind_params, describe, is_builtin, resolve

_names = count()


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named module into tmp_path (on sys.path); returns its name; unloads it afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(source: str) -> str:
        name = f"labd_unit_wf_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


def _code(fn: Callable[[], Any]) -> WorkflowError:
    with pytest.raises(WorkflowError) as info:
        fn()
    return info.value


# ---- resolve ----------------------------------------------------------------------------------------

def test_resolve_builtin_short_name() -> None:
    """A built-in short name resolves to the demo function."""
    assert resolve("demo.count") is demo.count
    assert is_builtin("demo.count") and not is_builtin("labd.runner.workflows.demo:count")


def test_every_builtin_resolves_to_a_callable() -> None:
    """Every entry of BUILTINS imports and is callable."""
    for name in BUILTINS:
        assert callable(resolve(name)), name


def test_resolve_import_path() -> None:
    """A 'module:function' path resolves to that function."""
    assert resolve("labd.runner.workflows.demo:fail") is demo.fail


def test_resolve_name_without_colon_is_unknown() -> None:
    """A name that is neither a built-in nor an import path is 'unknown_workflow' and lists the built-ins."""
    err = _code(lambda: resolve("demo.nope"))
    assert err.code == "unknown_workflow"
    assert "demo.count" in err.message


def test_resolve_missing_module() -> None:
    """A module that does not exist is 'unknown_workflow'."""
    err = _code(lambda: resolve("labd_no_such_module_xyz:run"))
    assert err.code == "unknown_workflow"
    assert "labd_no_such_module_xyz" in err.message


@pytest.mark.parametrize("attr", ["no_such_function", "__all__"])
def test_resolve_missing_or_non_callable_attribute(attr: str) -> None:
    """A missing attribute, or one that is not callable, is 'unknown_workflow'."""
    err = _code(lambda: resolve(f"labd.runner.workflows.demo:{attr}"))
    assert err.code == "unknown_workflow"
    assert attr in err.message


def test_a_misspelt_workflow_function_is_answered_with_the_nearest_and_the_modules_workflows(
        make_module: Callable[[str], str], tmp_path: Path) -> None:
    """``mod:talley`` (or ``./flows.py:talley``) where the module defines ``tally`` is refused ``unknown_workflow``
    saying "did you mean 'tally'?" and naming the module's workflows (its public functions), as a file named without
    ``:function`` already does; before, only "has no function 'talley'"."""
    name = make_module("""
        def tally(ctx, n: int = 1): pass
        def gate(ctx): pass
        def _helper(x): pass
    """)
    for ref in (f"{name}:talley", f"{tmp_path / name}.py:talley"):
        err = _code(lambda r=ref: resolve(r))  # type: ignore[misc]
        assert err.code == "unknown_workflow"
        assert err.message.endswith("has no function 'talley' (did you mean 'tally'? its workflows: gate, tally)"), \
            err.message
    assert _code(lambda: resolve(f"{name}:zzz")).message.endswith("has no function 'zzz' (its workflows: gate, tally)")


def test_resolve_module_that_raises_at_import(make_module: Callable[[str], str]) -> None:
    """A module raising at import is reported as 'workflow_import_failed' with the exception, not raised."""
    name = make_module("""
        raise RuntimeError("config missing")
        def run(ctx):
            pass
    """)
    err = _code(lambda: resolve(f"{name}:run"))
    assert err.code == "workflow_import_failed"
    assert "RuntimeError" in err.message and "config missing" in err.message


@pytest.mark.parametrize("ending", ["sys.exit('usage: flows.py INPUT')", "raise KeyboardInterrupt"])
def test_resolve_module_that_exits_at_import(make_module: Callable[[str], str], tmp_path: Path, ending: str) -> None:
    """A module (or file) whose top-level code calls sys.exit (a script's argument parsing) or raises
    KeyboardInterrupt is 'workflow_import_failed' naming it, not raised (before: it ended the checker, and
    `labd run` said only "inspecting the workflow crashed its process")."""
    code = f"""
        import sys
        {ending}
        def run(ctx):
            pass
    """
    name = make_module(code)
    for target in (f"{name}:run", f"{tmp_path / name}.py:run"):
        err = _code(lambda t=target: resolve(t))  # type: ignore[misc]
        assert err.code == "workflow_import_failed", err.message
        assert ("SystemExit: usage: flows.py INPUT" in err.message if "exit" in ending
                else "KeyboardInterrupt" in err.message), err.message


def test_resolve_module_with_syntax_error(make_module: Callable[[str], str]) -> None:
    """A module with a syntax error is 'workflow_import_failed' too."""
    name = make_module("def run(ctx:\n    pass\n")
    assert _code(lambda: resolve(f"{name}:run")).code == "workflow_import_failed"


def test_resolve_user_module(make_module: Callable[[str], str]) -> None:
    """A user module on sys.path resolves by import path."""
    name = make_module("""
        def run(ctx, n: int = 1):
            return n
    """)
    assert resolve(f"{name}:run")(None, n=4) == 4


# ---- bind_params ------------------------------------------------------------------------------------

def typed(ctx: Any, n: int, rate: float = 0.5, flag: bool = False, label: str = "x", anything=None) -> None:
    """A workflow with typed parameters."""


def kw(ctx: Any, n: int = 1, **extra: Any) -> None:
    """Accepts any extra parameter."""


def test_strings_are_converted_by_annotation() -> None:
    """String values from the command line become int, float and bool; str stays str."""
    assert bind_params(typed, {"n": "3", "rate": "1e-3", "flag": "true", "label": "42"}) == {
        "n": 3, "rate": 0.001, "flag": True, "label": "42"}


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("true", True), ("True", True), ("YES", True), ("on", True), (" yes ", True),
    ("0", False), ("false", False), ("No", False), ("OFF", False),
])
def test_bool_spellings(text: str, value: bool) -> None:
    """The accepted bool spellings, case- and whitespace-insensitive."""
    assert bind_params(typed, {"n": 1, "flag": text})["flag"] is value


@pytest.mark.parametrize(("name", "text"), [("flag", "maybe"), ("flag", ""), ("n", "three"), ("n", "1.5"),
                                            ("rate", "fast")])
def test_unconvertible_strings_are_bad_params(name: str, text: str) -> None:
    """A string that does not convert is reported under its parameter name."""
    params: dict[str, Any] = {"n": 1, name: text}
    err = _code(lambda: bind_params(typed, params))
    assert err.code == "bad_params"
    assert set(err.details["params"]) == {name}
    assert "expected" in err.details["params"][name]


def test_unknown_parameter_is_rejected() -> None:
    """A parameter the workflow does not take is an error listing the accepted names."""
    err = _code(lambda: bind_params(typed, {"n": 1, "bogus": 2}))
    assert err.code == "bad_params"
    assert "bogus" in err.details["params"]
    assert "rate" in err.details["params"]["bogus"]


def test_missing_required_parameter() -> None:
    """A parameter without default must be given."""
    err = _code(lambda: bind_params(typed, {}))
    assert err.details["params"] == {"n": "required parameter missing"}


def test_all_errors_are_reported_together() -> None:
    """Unknown, badly typed and missing parameters are all reported in one error."""
    err = _code(lambda: bind_params(typed, {"rate": "x", "zzz": 1}))
    assert set(err.details["params"]) == {"rate", "zzz", "n"}


def test_var_keyword_workflows_accept_anything() -> None:
    """With **kwargs, unknown parameters pass through unchanged; declared ones are still converted."""
    assert bind_params(kw, {"n": "5", "lr": "0.1", "obj": [1]}) == {"n": 5, "lr": "0.1", "obj": [1]}


@pytest.mark.parametrize(("name", "value"), [("n", 1.5), ("n", [1]), ("rate", {}), ("flag", 1),
                                             ("label", 3)])
def test_wrong_non_string_types_are_rejected(name: str, value: Any) -> None:
    """Non-string values of the wrong type are not coerced: they are bad_params."""
    params: dict[str, Any] = {"n": 1, name: value}
    err = _code(lambda: bind_params(typed, params))
    assert err.code == "bad_params" and name in err.details["params"]


def optionals(ctx: Any, a: Optional[int] = None, b: float | None = None, xs: list[int] | None = None,  # noqa: UP045
              d: dict = None, ys: list = None) -> None:  # type: ignore[assignment]
    """Optional scalars and containers (planning_and_control's ``plan: list[Any] | None``)."""


def test_optional_scalars_and_containers_are_converted_or_refused() -> None:
    """``Optional[int]`` / ``float | None`` convert strings like ``int`` / ``float`` (they arrived as the string);
    ``list`` / ``dict`` parameters take JSON text from ``-p`` (they arrived as the string ``'[1,2]'``) or the value
    itself; what does not fit is ``bad_params`` under its name; None stays None for an optional one."""
    assert bind_params(optionals, {"a": "5", "b": "0.5", "xs": "[1, 2]", "d": '{"k": 1}', "ys": "[]"}) == {
        "a": 5, "b": 0.5, "xs": [1, 2], "d": {"k": 1}, "ys": []}
    assert bind_params(optionals, {"a": None, "xs": None, "d": {"k": 2}}) == {"a": None, "xs": None, "d": {"k": 2}}
    err = _code(lambda: bind_params(optionals, {"a": "abc", "b": "fast", "xs": "1,2", "d": "[1]", "ys": {"k": 1}}))
    assert err.code == "bad_params" and set(err.details["params"]) == {"a", "b", "xs", "d", "ys"}, err.details
    assert "expected list" in err.details["params"]["xs"] and "expected dict" in err.details["params"]["d"]
    for bad in ("[NaN]", "[1e400]", f"[{2**70}]"):  # what the record could not hold as the value that ran
        assert "xs" in _code(lambda b=bad: bind_params(optionals, {"xs": b})).details["params"]  # type: ignore[misc]


def opt_str(ctx: Any, label: str | None = "x", k: int | None = 3) -> None:
    """An optional str and an optional int."""


def test_none_from_the_command_line_for_an_optional_parameter() -> None:
    """``-p k=none`` (or ``null``, any case) gives an ``int | None`` parameter None, as JSON null does (every spelling
    was refused: "expected int"); a ``str | None`` parameter keeps the word, which is a string it takes."""
    for word in ("none", "None", "NULL", " null "):
        assert bind_params(optionals, {"a": word, "xs": word})["a"] is None
        assert bind_params(opt_str, {"label": word, "k": word}) == {"label": word, "k": None}
    assert "a" in _code(lambda: bind_params(optionals, {"a": "nothing"})).details["params"]


@pytest.mark.parametrize("depth", [PARAM_DEPTH + 1, 400, 1100, 100_000])
def test_a_container_param_nested_too_deeply_is_bad_params(depth: int) -> None:
    """``-p xs=[[[...]]]`` nested past ``PARAM_DEPTH`` is ``bad_params`` naming ``xs`` and the limit, however deep
    (past ~1000 levels json's own parser gives up with a RecursionError; it crashed the check then); as deep as
    the limit it binds. A deeper one was accepted up to the store's limit, then refused as a store error, an
    internal error or a crashed check depending on its depth."""
    err = _code(lambda: bind_params(optionals, {"xs": "[" * depth + "]" * depth, "d": '{"a":' * depth + "1"
                                                + "}" * depth}))
    assert err.code == "bad_params" and set(err.details["params"]) == {"xs", "d"}, err.details
    assert f"nested at most {PARAM_DEPTH} levels" in err.details["params"]["xs"]
    ok = "[" * PARAM_DEPTH + "]" * PARAM_DEPTH
    assert bind_params(optionals, {"ys": ok})["ys"] == json.loads(ok)


def test_param_depth_is_what_a_request_may_nest_around_a_param() -> None:
    """A parameter from ``-p`` may nest as deep as one sent as JSON in a ``session.start`` request can: the
    daemon's request limit less the two levels (``params``, the name) around it."""
    from labd.daemon.control import MAX_REQUEST_DEPTH
    assert PARAM_DEPTH == MAX_REQUEST_DEPTH - 2


def literals(ctx: Any, mode: Literal["fast", "slow"] = "fast", level: Literal[1, 2, 3] = 1,
             strict: Literal[True] | None = None) -> None:
    """Literal parameters: strings, numbers, a bool."""


def test_literal_parameters_take_one_of_their_values() -> None:
    """A ``Literal[...]`` parameter takes one of its values: given as the value, or from ``-p`` as the text that spells
    it (``-p level=2`` is the int 2); anything else is ``bad_params`` naming the choices (``Literal["x", "y"]``
    accepted ``z`` before, and ``-p level=2`` arrived as the string ``'2'``)."""
    assert bind_params(literals, {"mode": "slow", "level": "2", "strict": "true"}) == {
        "mode": "slow", "level": 2, "strict": True}
    assert bind_params(literals, {"mode": "fast", "level": 3, "strict": None}) == {"mode": "fast", "level": 3,
                                                                                   "strict": None}
    err = _code(lambda: bind_params(literals, {"mode": "medium", "level": "4"}))
    assert err.code == "bad_params" and set(err.details["params"]) == {"mode", "level"}
    assert err.details["params"]["mode"] == "expected one of 'fast', 'slow', got 'medium'"
    assert "level" in _code(lambda: bind_params(literals, {"level": 2.0})).details["params"]  # not the int 2


def shapes(ctx: Any, pair: tuple[int, int] = (0, 0), tags: set[str] = frozenset(),  # type: ignore[assignment]
           frozen: frozenset = frozenset(), either: int | str = 0, maybe: float | str | None = None) -> None:
    """Tuples, sets and unions."""


def test_tuples_sets_and_unions_are_converted_or_refused() -> None:
    """``tuple`` / ``set`` / ``frozenset`` parameters take a JSON list from ``-p`` (or a list from the SDK: what the
    record holds) and get their own type; a union takes the first member that fits, text trying the other members
    before ``str`` (``-p either=5`` is 5 for ``int | str``, as text is for a plain ``int``), while a value already of
    another member's type stays as given.
    All of these arrived as the raw string, unchecked."""
    assert bind_params(shapes, {"pair": "[1, 2]", "tags": '["a", "b", "a"]', "frozen": [3], "either": "5",
                                "maybe": "0.5"}) == {"pair": (1, 2), "tags": {"a", "b"}, "frozen": frozenset({3}),
                                                     "either": 5, "maybe": 0.5}
    assert bind_params(shapes, {"either": "five", "maybe": "x"}) == {"either": "five", "maybe": "x"}
    assert bind_params(shapes, {"maybe": None}) == {"maybe": None}
    assert bind_params(shapes, {"either": 7})["either"] == 7
    err = _code(lambda: bind_params(shapes, {"pair": "1,2", "tags": '{"a": 1}', "frozen": "[[1], [2]]",
                                             "either": 1.5, "maybe": [1]}))
    problems = err.details["params"]
    assert err.code == "bad_params" and set(problems) == {"pair", "tags", "frozen", "either", "maybe"}, problems
    assert "expected tuple as JSON" in problems["pair"] and "expected set as JSON" in problems["tags"]
    assert "hashable" in problems["frozen"]
    assert problems["either"] == "expected int | str, got 1.5"


def test_a_set_param_is_recorded_as_a_list_that_binds_to_the_same_set() -> None:
    """The workflow check's answer (JSON) records a set parameter as a sorted list, and binding that list again (a
    queued start, a resume, a replay) gives the same set; ``repr`` used to record it as the text ``"{'a', 'b'}"``."""
    import json

    from labd.runner.workflows.registry import record_default

    bound = bind_params(shapes, {"tags": '["b", "a"]'})
    recorded = json.loads(json.dumps(bound, default=record_default))
    assert recorded == {"tags": ["a", "b"]}
    assert bind_params(shapes, recorded) == bound


def test_int_is_widened_to_float() -> None:
    """An int given for a float parameter becomes a float; a bool does not."""
    bound = bind_params(typed, {"n": 1, "rate": 2})
    assert bound["rate"] == 2.0 and isinstance(bound["rate"], float)
    assert _code(lambda: bind_params(typed, {"n": 1, "rate": True})).code == "bad_params"


def test_native_values_of_the_right_type_pass_and_unannotated_accept_anything() -> None:
    """Values already of the annotated type are kept; unannotated parameters take any value."""
    assert bind_params(typed, {"n": 2, "flag": False, "anything": {"a": 1}}) == {"n": 2, "flag": False,
                                                                               "anything": {"a": 1}}


# ---- describe ---------------------------------------------------------------------------------------

def test_describe_lists_params_with_types_defaults_and_doc() -> None:
    """describe() gives the docstring and each parameter (ctx excluded) with type, required and default."""
    d = describe(typed)
    assert d["doc"] == "A workflow with typed parameters."
    assert d["params"][:4] == [
        {"name": "n", "type": "int", "required": True, "default": None},
        {"name": "rate", "type": "float", "required": False, "default": 0.5},
        {"name": "flag", "type": "bool", "required": False, "default": False},
        {"name": "label", "type": "str", "required": False, "default": "x"},
    ]


def test_describe_unannotated_parameter_has_type_any() -> None:
    """A parameter without annotation is described as type 'any' (not the internal 'inspect._empty')."""
    (anything,) = [p for p in describe(typed)["params"] if p["name"] == "anything"]
    assert anything == {"name": "anything", "type": "any", "required": False, "default": None}


def test_describe_spells_a_literal_as_its_values() -> None:
    """A ``Literal`` parameter reads as its values (``'approve' | 'reject' | 'fail'``), not as
    ``typing.Literal['approve', ...]``; an optional one keeps ``| None`` without the ``typing.`` prefix."""
    def wf(ctx: Any, policy: Literal["approve", "reject", "fail"] = "reject",
           hint: Optional[int] = None) -> None:  # noqa: UP045 - the old spelling is what str() prefixes
        pass
    kinds = {p["name"]: p["type"] for p in describe(wf)["params"]}
    assert kinds == {"policy": "'approve' | 'reject' | 'fail'", "hint": "Optional[int]"}
    from labd.runner.workflows.planning import hitl
    assert {p["name"]: p["type"] for p in describe(hitl)["params"]}["timeout_policy"] == "'approve' | 'reject' | 'fail'"


def test_describe_builtin() -> None:
    """The built-in demo.count describes n (int) and delay (float)."""
    d = describe(resolve("demo.count"))
    params = {p["name"]: (p["type"], p["required"], p["default"]) for p in d["params"]}
    assert params["n"] == ("int", False, 10)
    assert params["delay"] == ("float", False, 0.2)
    assert "ctx" not in params
    assert d["doc"].startswith("Count to")


# ---- `from __future__ import annotations` -----------------------------------------------------------

def test_future_annotations_module_converts_params(make_module: Callable[[str], str]) -> None:
    """String annotations (PEP 563) are evaluated, so conversion and describe() work as usual."""
    name = make_module("""
        from __future__ import annotations
        from labd.runner.context import Context

        def run(ctx: Context, n: int, rate: float = 1.0, flag: bool = False) -> int:
            '''Future-annotated.'''
            return n
    """)
    fn = resolve(f"{name}:run")
    assert bind_params(fn, {"n": "7", "rate": "2", "flag": "no"}) == {"n": 7, "rate": 2.0, "flag": False}
    assert [p["type"] for p in describe(fn)["params"]] == ["int", "float", "bool"]
    assert _code(lambda: bind_params(fn, {"n": "seven"})).code == "bad_params"


def test_future_annotations_with_type_checking_only_import_still_converts(make_module: Callable[[str], str]) -> None:
    """A module importing Context only under TYPE_CHECKING (so one annotation cannot be evaluated) still gets
    its int/bool parameters converted, instead of receiving the raw strings ('no' would be truthy)."""
    name = make_module("""
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from labd.runner.context import Context

        def run(ctx: Context, n: int = 1, flag: bool = False) -> int:
            return n
    """)
    fn = resolve(f"{name}:run")
    assert bind_params(fn, {"n": "5", "flag": "no"}) == {"n": 5, "flag": False}


@pytest.mark.parametrize(("params", "says"), [
    ({"n": "9223372036854775808"}, "out of range"), ({"n": 2**64}, "out of range"),
    ({"n": -2**63 - 1}, "out of range"), ({"n": 2**5000}, "an integer of 5001 bits"),
    ({"rate": "nan"}, "finite"), ({"rate": "inf"}, "finite"), ({"rate": float("-inf")}, "finite"),
    ({"rate": 10**400}, "finite"), ({"rate": "1e999"}, "finite"),
    ({"n": "9" * 5000}, "(5002 characters)"), ({"n": "x" * 1_000_000}, "(1000002 characters)"),
])
def test_values_the_record_cannot_hold_are_bad_params_with_a_short_message(params: dict[str, Any], says: str) -> None:
    """An int beyond 64 bits or a float that is not finite is refused (JSON has no NaN, the store's integers are
    64-bit), and the message quotes a long value cut short, not whole."""
    with pytest.raises(WorkflowError) as err:
        bind_params(typed, {"n": 1, **params})
    assert err.value.code == "bad_params"
    assert says in str(err.value) and len(str(err.value)) < 200, str(err.value)[:300]


def test_the_64_bit_bounds_themselves_are_accepted() -> None:
    """The largest and smallest 64-bit integers bind as they are."""
    assert bind_params(typed, {"n": str(2**63 - 1)})["n"] == 2**63 - 1
    assert bind_params(typed, {"n": -2**63})["n"] == -2**63


def items(ctx: Any, xs: list[int] = [], rates: dict[str, float] = {}, pair: tuple[int, str] = (0, ""),  # noqa: B006
          rows: list[list[int]] | None = None, tags: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Containers whose items have a type."""


def test_the_items_of_a_typed_container_are_checked_as_their_type() -> None:
    """``list[int]``, ``dict[str, float]``, ``tuple[int, str]``, ``set[str]`` and nested ones check each item as its
    own type (ints widened to float as for a plain float) and refuse a misfit naming the item; ``list[int]`` took
    ``["a"]`` (from ``-p xs='["a"]'`` or the SDK) and the workflow met a string where it declared ints."""
    assert bind_params(items, {"xs": "[1, 2]", "rates": {"a": 1}, "pair": [1, "b"], "rows": "[[1], []]",
                               "tags": ["a"]}) == {"xs": [1, 2], "rates": {"a": 1.0}, "pair": (1, "b"),
                                                   "rows": [[1], []], "tags": {"a"}}
    assert isinstance(bind_params(items, {"rates": {"a": 1}})["rates"]["a"], float)
    err = _code(lambda: bind_params(items, {"xs": ["a"], "rates": '{"a": "x"}', "pair": [1, 2, 3],
                                            "rows": [[1, "b"]], "tags": [1]}))
    problems = err.details["params"]
    assert err.code == "bad_params" and set(problems) == {"xs", "rates", "pair", "rows", "tags"}, problems
    assert problems["xs"] == "item 0: expected int, got 'a'"
    assert problems["rates"] == "item 'a': expected float, got 'x'"
    assert problems["pair"] == "expected 2 items, got 3"
    assert problems["rows"] == "item 0: item 1: expected int, got 'b'"


def test_a_file_of_several_workflows_names_them_as_they_can_be_named(tmp_path: Path) -> None:
    """Several candidate workflows in a file named without ``:function``: the error names each by the name the
    file gives it (``lam`` for ``lam = lambda ctx: ...``; it suggested ``flows.py:<lambda>``, which is refused), and
    that name runs."""
    flows = tmp_path / "flows.py"
    flows.write_text("lam = lambda ctx: 1\n\ndef other(ctx):\n    return 2\n")
    with pytest.raises(WorkflowError) as err:
        resolve(str(flows))
    assert "(lam, other)" in err.value.message and "<lambda>" not in err.value.message, err.value.message
    assert resolve(f"{flows}:lam")(None) == 1


def test_a_function_that_takes_no_ctx_is_refused_when_named(tmp_path: Path) -> None:
    """`flows.py:go` where ``go()`` takes no argument was accepted, and its session failed at start with a
    TypeError: refused now, saying a workflow is fn(ctx, ...). One taking ``*args`` or any positional is fine."""
    flows = tmp_path / "flows2.py"
    flows.write_text("def go():\n    return 1\n\ndef kw(*, n=1):\n    return n\n\ndef star(*a):\n    return a\n")
    for name in ("go", "kw"):
        with pytest.raises(WorkflowError) as err:
            resolve(f"{flows}:{name}")
        assert "takes no ctx" in err.value.message, err.value.message
    assert resolve(f"{flows}:star")("ctx") == ("ctx",)
