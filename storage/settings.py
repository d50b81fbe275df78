"""Settings files: YAML read into typed dataclasses, overridden at any depth, checked before use.

In: a YAML file (a mapping of sections), `dotted.key=value` overrides (the value parsed as YAML;
any depth: `text.bpe.vocab_size=500`, `run.out=runs/x`), a dataclass type. Out: an instance of
it. One set of rules for DAGs (pipeline.dag) and trainer configs (trainer.config):
- an unknown key fails, naming its path and the closest known key;
- types are checked: str, int (not bool), bool, float (an int is taken; so is a string that
  YAML 1.1 leaves unparsed, such as "6e-3"; it must be finite), lists and mappings element by
  element, `X | None`, nested dataclasses;
- a dataclass's own `__post_init__` ValueError is reported under its key path;
- `check` then asks every dataclass with a `problems()` method for (key, problem) pairs: the
  range and choice checks of each section live beside its fields.
Errors are raised as the caller's error type (DagError, ConfigError), so each tool prints its
own name; messages start with the file's path and name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import yaml

Problems = Iterator[tuple[str, str]]  # (key, what is wrong with its value)


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the file and the key."""


def read_file(path: str | Path, what: str = "settings file", error: type[Exception] = SettingsError) -> dict:
    """The mapping at the top of a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping of sections")
    return raw


def apply_override(raw: dict, item: str, error: type[Exception] = SettingsError) -> None:
    """Set `dotted.key=value` in `raw`, at any depth; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise error(f"override {item!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"override {item!r}: value is not valid YAML: {err}") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise error(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def build(cls, data: Any, error: type[Exception] = SettingsError, where: str = ""):
    """Turn a mapping into dataclass `cls`, checking keys and types; errors name the key path."""
    if not isinstance(data, dict):
        raise error(f"{where or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise error(f"unknown key {where + '.' if where else ''}{key}{hint}")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key, error)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a dataclass's own check; its message starts with the field name
        raise error(f"{where}.{err}" if where else str(err)) from None


def check(settings, error: type[Exception] = SettingsError, where: str = "") -> None:
    """Raise `error` for the first problem any dataclass in `settings` reports (`problems()`)."""
    if hasattr(settings, "problems"):
        for key, problem in settings.problems():
            raise error(f"{where}.{key} {problem}" if where else f"{key} {problem}")
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            check(value, error, f"{where}.{f.name}" if where else f.name)


def load(
    cls,
    path: str | Path,
    overrides: list[str] = (),
    error: type[Exception] = SettingsError,
    what: str = "settings file",
):
    """Read, override, build and check: the whole path for a file that needs nothing else."""
    raw = read_file(path, what, error)
    try:
        for item in overrides:
            apply_override(raw, item, error)
        settings = build(cls, raw, error)
        check(settings, error)
    except error as err:
        raise error(f"{path}: {err}") from None
    return settings


def positive(value, key: str, optional: bool = False) -> Problems:
    """(key, problem) unless `value` is > 0 (or None when optional)."""
    if (value is None and optional) or (value is not None and value > 0):
        return
    yield key, f"must be > 0{' or null' if optional else ''}, got {value!r}"


def _convert(tp, value, where: str, error: type[Exception]):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where, error)
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, error, where)
    if origin is list:
        if not isinstance(value, list):
            raise error(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, f"{where}[{i}]", error) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{where}: expected a mapping, got {value!r}")
        _, inner = typing.get_args(tp)
        return {str(k): _convert(inner, v, f"{where}.{k}", error) for k, v in value.items()}
    if tp is float:
        number = _number(value)
        if number is None:
            raise error(f"{where}: expected float, got {value!r}")
        if not math.isfinite(number):
            raise error(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp in (str, int, bool) and type(value) is tp:
        return value
    raise error(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _number(value) -> float | None:
    """A float from an int, a float, or a numeric string ("6e-3", which YAML 1.1 leaves a string)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
