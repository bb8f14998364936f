"""A yes/no check compiled from a JSON Schema: a valid payload costs microseconds, not jsonschema's ~400 µs.

It only answers "valid?"; explaining an invalid payload stays with jsonschema. A schema using any
keyword not handled here compiles to ``None``, and the caller keeps jsonschema's own ``is_valid``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from jsonschema import FormatChecker

Check = Callable[[Any], bool]


def is_integer(instance: object) -> bool:
    """An integer for the schemas: an ``int`` but not a ``bool``, and never a float such as ``5.0``.

    :param instance: the value to classify.
    """
    # The exact-type test first: ABC isinstance checks cost most of a valid payload's time.
    if type(instance) is int:
        return True
    return isinstance(instance, numbers.Integral) and not isinstance(instance, bool)


def is_number(instance: object) -> bool:
    """A number for the schemas: ``int``, finite ``float`` or finite ``Decimal``; not ``bool``.

    NaN and the infinities have no JSON form, so they are refused here rather than by the platform.

    :param instance: the value to classify.
    """
    if type(instance) is int:
        return True
    if isinstance(instance, (bool, str)):
        return False
    if isinstance(instance, numbers.Integral):
        return True
    if isinstance(instance, Decimal):
        return instance.is_finite()
    return isinstance(instance, numbers.Real) and math.isfinite(instance)


# The one definition of each JSON type, shared with the jsonschema validator so both agree.
TYPE_PREDICATES: Mapping[str, Callable[[object], bool]] = {
    "array": lambda instance: isinstance(instance, list),
    "boolean": lambda instance: isinstance(instance, bool),
    "integer": is_integer,
    "null": lambda instance: instance is None,
    "number": is_number,
    "object": lambda instance: isinstance(instance, dict),
    "string": lambda instance: isinstance(instance, str),
}

# Keywords that never make a document invalid (`then`/`else` are read together with `if`).
_NO_ASSERTION = frozenset(
    {
        "$schema",
        "$comment",
        "$defs",
        "title",
        "description",
        "errorMessage",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "then",
        "else",
    }
)


class _UnsupportedSchemaError(Exception):
    """The schema uses something this compiler does not handle."""


def compile_check(schema: Any, *, format_checker: FormatChecker) -> Check | None:
    """Compile ``schema`` into a function that says whether a document is valid, or ``None``.

    :param schema: a draft 2020-12 schema using only ``type``, ``properties``, ``required``,
        ``additionalProperties``, ``items`` (without ``prefixItems``), ``maxItems``, ``pattern``,
        ``minimum``, ``minLength``, ``maxLength``, ``enum`` (of strings), ``format``, local ``$ref``,
        ``if``/``then``/``else``, ``anyOf``, ``not`` and annotations.
    :param format_checker: asserts ``format`` exactly as the jsonschema validator does.
    :return: the check, or ``None`` when the schema uses anything else.
    """
    try:
        return _Compiler(schema, format_checker).compile(schema, is_root=True)
    except _UnsupportedSchemaError:
        return None


def _always(instance: object) -> bool:
    return True


def _never(instance: object) -> bool:
    return False


def _all_of(checks: list[Check]) -> Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]

    def check(instance: object) -> bool:
        # Plain loops here and below: all()/any() over a generator makes the whole check 2.5x slower.
        for one in checks:  # noqa: SIM110
            if not one(instance):
                return False
        return True

    return check


class _Compiler:
    def __init__(self, root: Any, format_checker: FormatChecker) -> None:
        self._root = root
        self._format_checker = format_checker
        self._refs: dict[str, Check] = {}
        self._resolving: set[str] = set()
        self._keywords: dict[str, Callable[[Any, Mapping[str, Any]], Check]] = {
            "type": self._type,
            "properties": self._properties,
            "required": self._required,
            "additionalProperties": self._additional_properties,
            "items": self._items,
            "maxItems": self._max_items,
            "pattern": self._pattern,
            "minimum": self._minimum,
            "minLength": self._min_length,
            "maxLength": self._max_length,
            "enum": self._enum,
            "format": self._format,
            "$ref": self._ref,
            "if": self._if,
            "anyOf": self._any_of,
            "not": self._not,
        }

    def compile(self, schema: Any, *, is_root: bool = False) -> Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise _UnsupportedSchemaError(repr(schema))
        checks = []
        for keyword, value in schema.items():
            if keyword in _NO_ASSERTION or (keyword == "$id" and is_root):
                continue
            builder = self._keywords.get(keyword)
            if builder is None:
                # A nested `$id` changes how `$ref` resolves; anything else is simply unknown here.
                raise _UnsupportedSchemaError(keyword)
            checks.append(builder(value, schema))
        return _all_of(checks)

    def _type(self, value: Any, schema: Mapping[str, Any]) -> Check:
        names = [value] if isinstance(value, str) else list(value)
        try:
            predicates = tuple(TYPE_PREDICATES[name] for name in names)
        except KeyError as unknown:
            raise _UnsupportedSchemaError(f"type {unknown}") from None
        if len(predicates) == 1:
            return predicates[0]

        def check(instance: object) -> bool:
            for predicate in predicates:  # noqa: SIM110
                if predicate(instance):
                    return True
            return False

        return check

    def _properties(self, value: Mapping[str, Any], schema: Mapping[str, Any]) -> Check:
        table = {name: self.compile(subschema) for name, subschema in value.items()}

        def check(instance: object) -> bool:
            if not isinstance(instance, dict):
                return True
            # Payloads are smaller than the schema's property list: walk the payload.
            for key, item in instance.items():
                property_check = table.get(key)
                if property_check is not None and not property_check(item):
                    return False
            return True

        return check

    def _required(self, value: list[str], schema: Mapping[str, Any]) -> Check:
        names = frozenset(value)
        return lambda instance: not isinstance(instance, dict) or names <= instance.keys()

    def _additional_properties(self, value: Any, schema: Mapping[str, Any]) -> Check:
        if "patternProperties" in schema:
            raise _UnsupportedSchemaError("patternProperties")
        known = frozenset(schema.get("properties", {}))
        extra_check = self.compile(value)

        def check(instance: object) -> bool:
            if not isinstance(instance, dict):
                return True
            for key, item in instance.items():  # noqa: SIM110
                if key not in known and not extra_check(item):
                    return False
            return True

        return check

    def _items(self, value: Any, schema: Mapping[str, Any]) -> Check:
        # With `prefixItems`, `items` covers only the rest; `prefixItems` itself is not compiled,
        # so such a schema falls back to jsonschema before this check is ever used.
        item_check = self.compile(value)

        def check(instance: object) -> bool:
            if not isinstance(instance, list):
                return True
            for item in instance:  # noqa: SIM110
                if not item_check(item):
                    return False
            return True

        return check

    def _max_items(self, value: int, schema: Mapping[str, Any]) -> Check:
        return lambda instance: not isinstance(instance, list) or len(instance) <= value

    def _pattern(self, value: str, schema: Mapping[str, Any]) -> Check:
        search = re.compile(value).search
        return lambda instance: not isinstance(instance, str) or search(instance) is not None

    def _minimum(self, value: Any, schema: Mapping[str, Any]) -> Check:
        return lambda instance: not is_number(instance) or instance >= value

    def _min_length(self, value: int, schema: Mapping[str, Any]) -> Check:
        return lambda instance: not isinstance(instance, str) or len(instance) >= value

    def _max_length(self, value: int, schema: Mapping[str, Any]) -> Check:
        return lambda instance: not isinstance(instance, str) or len(instance) <= value

    def _enum(self, value: list[Any], schema: Mapping[str, Any]) -> Check:
        if not all(isinstance(choice, str) for choice in value):
            # jsonschema's equality treats 1, 1.0 and True specially; only strings are simple.
            raise _UnsupportedSchemaError("enum of non-strings")
        choices = frozenset(value)
        return lambda instance: isinstance(instance, str) and instance in choices

    def _format(self, value: str, schema: Mapping[str, Any]) -> Check:
        conforms = self._format_checker.conforms
        return lambda instance: conforms(instance, value)

    def _ref(self, value: str, schema: Mapping[str, Any]) -> Check:
        if value in self._refs:
            return self._refs[value]
        is_local_pointer = isinstance(value, str) and (value == "#" or value.startswith("#/"))
        if not is_local_pointer or value in self._resolving:
            # Remote and recursive references are left to jsonschema.
            raise _UnsupportedSchemaError(f"$ref {value!r}")
        self._resolving.add(value)
        target: Any = self._root
        for token in value[1:].split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            try:
                target = target[int(token)] if isinstance(target, list) else target[token]
            except (KeyError, IndexError, ValueError, TypeError):
                raise _UnsupportedSchemaError(f"$ref {value!r}") from None
        check = self.compile(target)
        self._resolving.discard(value)
        self._refs[value] = check
        return check

    def _if(self, value: Any, schema: Mapping[str, Any]) -> Check:
        condition = self.compile(value)
        then_check = self.compile(schema.get("then", True))
        else_check = self.compile(schema.get("else", True))
        return lambda instance: then_check(instance) if condition(instance) else else_check(instance)

    def _any_of(self, value: list[Any], schema: Mapping[str, Any]) -> Check:
        branches = [self.compile(branch) for branch in value]

        def check(instance: object) -> bool:
            for branch in branches:  # noqa: SIM110
                if branch(instance):
                    return True
            return False

        return check

    def _not(self, value: Any, schema: Mapping[str, Any]) -> Check:
        negated = self.compile(value)
        return lambda instance: not negated(instance)
