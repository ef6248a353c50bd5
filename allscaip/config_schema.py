"""Declared configuration: the one machinery behind every settings object of the project.

A configuration is a dataclass. This module reads one from a mapping and builds command-line
options from the same declaration, so the model config (:mod:`allscaip.config`), the training
config (:mod:`allscaip.train.config`) and the liquid settings
(:mod:`allscaip.workflows.liquid.settings`) share one set of rules:

* :func:`from_dict`: unknown keys are a :class:`ConfigError` that names them and lists the
  valid ones; a field whose type is a dataclass is read from a nested mapping.
* :func:`preset_values`: the values of a named preset, or an error listing the presets.
* :func:`coerce_fields` / :func:`coerce_mapping`: values from YAML or the command line
  converted to the declared types (``"2e-3"`` to a float, ``3.0`` to an int), or an error
  naming the field.
* :func:`setting`: a dataclass field that is also a command-line option (flag name, help,
  unit, choices in the field's metadata); :func:`add_arguments` adds those options to an
  ``argparse`` parser and :func:`values_from_arguments` reads them back by field name.

This module sits in the base layer: it imports nothing from the rest of the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Mapping, Optional, Sequence, Type, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


# ----------------------------------------------------------------------------- keys and presets


def check_keys(data: Mapping[str, Any], valid: Iterable[str], where: str = "", owner: str = "") -> None:
    """A :class:`ConfigError` naming the keys of ``data`` outside ``valid`` and listing the valid ones.

    ``where`` prefixes the message (the section or file), ``owner`` names the schema.
    """
    valid = sorted(valid)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        prefix = f"{where}: " if where else ""
        of = f" for {owner}" if owner else ""
        raise ConfigError(f"{prefix}unknown key(s) {unknown}{of}; valid keys are: {valid}")


def from_dict(cls: Type[T], data: Optional[Mapping[str, Any]], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error listing the valid keys."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    check_keys(data, names, where, cls.__name__)
    hints = _type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        sub = hints.get(k)
        nested = sub if dataclasses.is_dataclass(sub) and isinstance(v, Mapping) else None
        kwargs[k] = from_dict(nested, v, f"{where}.{k}" if where else k) if nested else v
    return cls(**kwargs)


def preset_values(presets: Mapping[str, Mapping[str, Any]], name: Optional[str], where: str) -> dict[str, Any]:
    """The values of preset ``name`` (none for ``None``); an unknown name is an error listing the presets."""
    if name is None:
        return {}
    if name not in presets:
        raise ConfigError(f"{where}: unknown preset {name!r}; choose one of {sorted(presets)}")
    return dict(presets[name])


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation this module cannot resolve: no nesting, no coercion
        return {}


# ----------------------------------------------------------------------------- types


def as_list(v: Any) -> list:
    """``v`` as a list: lists and tuples element by element, anything else as one element."""
    return list(v) if isinstance(v, (list, tuple)) else [v]


def coerce_fields(obj: Any, where: str) -> None:
    """Convert the fields of a config dataclass instance to their declared types in place."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for name, value in coerce_mapping(type(obj), values, where).items():
        setattr(obj, name, value)


def coerce_mapping(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` with each value of a field of ``cls`` converted to the field's declared type."""
    hints = _type_hints(cls)
    return {k: (coerce_value(v, hints[k], f"{where}.{k}") if k in hints else v) for k, v in data.items()}


def coerce_value(v: Any, tp: Any, where: str) -> Any:
    """``v`` converted to type ``tp`` (bool, int, float, str, list[...] and unions of them)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce_value(v, a, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {v!r} ({'; '.join(errors)})")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if item is Any:
            return as_list(v)
        return [coerce_value(x, item, f"{where}[{i}]") for i, x in enumerate(as_list(v))]
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {v!r}")
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):  # YAML 1.1 reads "2e-3" as a string
            try:
                return float(v)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    if tp is str:
        if isinstance(v, str):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        raise ConfigError(f"{where}: expected a string, got {v!r}")
    return v


# ----------------------------------------------------------------------------- command line


def setting(
    default: Any = dataclasses.MISSING,
    *,
    flag: Optional[str] = None,
    help: Optional[str] = None,
    unit: Optional[str] = None,
    choices: Optional[Sequence[Any]] = None,
    required: bool = False,
) -> Any:
    """A dataclass field with default ``default`` that :func:`add_arguments` turns into the
    option ``flag``, whose help is ``help`` followed by ``unit`` (``"help, unit"``).
    Without ``flag`` the field is a setting but no command-line option."""
    meta = {"flag": flag, "help": help, "unit": unit, "choices": tuple(choices) if choices else None}
    meta["required"] = required
    return dataclasses.field(default=default, metadata=meta)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag")]


def option_help(f: dataclasses.Field) -> Optional[str]:
    """The help text of option field ``f``: its help, then its unit."""
    parts = [p for p in (f.metadata.get("help"), f.metadata.get("unit")) if p]
    return ", ".join(parts) if parts else None


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """Add one option per :func:`setting` field of ``cls`` that has a flag, in declaration order.

    The option stores into the field's name (``args.<field>``), defaults to the field's default,
    converts to the field's type (``int``, ``float``, ``Optional[...]`` of them) and shows the
    flag's own name as its metavar (``--temperature TEMPERATURE``).
    """
    hints = _type_hints(cls)
    for f in option_fields(cls):
        flag = f.metadata["flag"]
        kwargs: dict[str, Any] = {"dest": f.name, "help": option_help(f)}
        kwargs["default"] = None if f.default is dataclasses.MISSING else f.default
        tp = _scalar_type(hints.get(f.name))
        if tp is bool:
            kwargs["action"] = "store_true"
        else:
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            else:
                kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            if tp in (int, float):
                kwargs["type"] = tp
        if f.metadata.get("required"):
            kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def values_from_arguments(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """``{field: value}`` of the options :func:`add_arguments` added for ``cls``, read from ``args``."""
    return {f.name: getattr(args, f.name) for f in option_fields(cls)}


def _scalar_type(tp: Any) -> Any:
    """``X`` for ``Optional[X]`` / ``X | None``, else ``tp``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return tp
