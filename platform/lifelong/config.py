"""Job configuration: frozen dataclasses filled from one YAML file plus command-line overrides.

A job declares its config as a (possibly nested) frozen dataclass whose ``__post_init__``
validates values. ``load_config`` reads the YAML, applies ``key.sub=value`` overrides, and
reports every unknown key at once, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np
import yaml

from lifelong.errors import ConfigError

T = TypeVar("T")


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raises ConfigError unless ``value`` is an int (numpy ints too) >= ``minimum``.

    ``name`` is the field's name in its own section (``"steps"``, not ``"train.steps"``): the
    loader adds the section's path.

    bool is an int subclass, but ``way=True`` is a bug, not 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"must be an int >= {minimum}, got {value!r}", key=name)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turns ``["train.steps=100", "memory.num_slots=8192"]`` into a nested dict.

    Values are parsed as YAML scalars, so ``1e-4`` is a float and ``true`` a bool.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a field inside a scalar")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _unknown_keys(cls: type, data: Mapping[str, Any], prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = []
    for key, value in data.items():
        if key not in fields:
            unknown.append(prefix + key)
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
            unknown += _unknown_keys(hints[key], value, prefix + key + ".")
    return unknown


def _accepts_float(hint: Any) -> bool:
    return hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                             and float in typing.get_args(hint))


def _as_float(name: str, value: Any) -> Any:
    """ints become floats; so do strings like "1e-4", which PyYAML (YAML 1.1) reads as str."""
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    return value


def _section_defaults(f: dataclasses.Field) -> dict[str, Any]:
    """The values a job gives a section by default (e.g. its own MLflow experiment name): a
    partial section in a config overrides them key by key instead of the class defaults."""
    if f.default_factory is dataclasses.MISSING:
        return {}
    try:
        default = f.default_factory()
    except ConfigError:  # the section has required keys: no complete default
        return {}
    return {g.name: getattr(default, g.name) for g in dataclasses.fields(default)
            if not dataclasses.is_dataclass(getattr(default, g.name))}


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> tuple[T | None, list[str]]:
    """Builds ``cls`` from ``data``; returns (the object or None, every problem found).

    Nested sections are built first and all their problems kept. When the whole fails, each
    given field is tried alone against the defaults, so every wrong value is named, not only
    the first one ``__post_init__`` meets.
    """
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, Mapping):
                problems.append(f"{prefix}{f.name} must be a mapping, got {value!r}")
                continue
            value, nested = _build(hints[f.name], {**_section_defaults(f), **value},
                                   f"{prefix}{f.name}.")
            problems += nested
            if value is None:
                continue
        elif _accepts_float(hints[f.name]) and not isinstance(value, bool):
            try:
                value = _as_float(prefix + f.name, value)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
        elif typing.get_origin(hints[f.name]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    whole = _construct(cls, kwargs, prefix)
    if isinstance(whole, str):
        if not isinstance(_construct(cls, {}, prefix), str):
            for name, value in kwargs.items():  # the defaults are valid: blame field by field
                alone = _construct(cls, {name: value}, prefix)
                if isinstance(alone, str) and alone not in problems:
                    problems.append(alone)
        if whole not in problems:
            problems.append(whole)
        return None, problems
    return (whole if not problems else None), problems


def _construct(cls: type[T], kwargs: Mapping[str, Any], prefix: str = "") -> T | str:
    """cls(**kwargs), or the message of the ConfigError it raised (its key under ``prefix``)."""
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        return exc.at(prefix)
    except (TypeError, ValueError) as exc:
        return f"{cls.__name__}: {exc}"


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Builds the dataclass ``cls`` from a nested mapping.

    Raises:
        ConfigError: naming every unknown key and every invalid value at once.
    """
    problems = [f"unknown key {key}" for key in sorted(_unknown_keys(cls, data))]
    built, invalid = _build(cls, data)
    problems += invalid
    if problems:
        raise ConfigError(f"bad config for {cls.__name__} ({len(problems)} problem"
                          f"{'s' if len(problems) > 1 else ''}): " + "; ".join(problems))
    return built


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Reads ``path`` (YAML; may be None for the defaults) and applies ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = dict(loaded or {})
    return config_from_dict(cls, _merge(data, parse_overrides(overrides)))


def config_to_dict(config: Any) -> dict[str, Any]:
    """Flattens a config dataclass to ``{"section.field": value}`` (for MLflow params)."""
    return _flatten(dataclasses.asdict(config), "")


def _flatten(data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat


def config_from_args(cls: type[T], description: str, argv: Sequence[str] | None,
                     example_config: str) -> T:
    """A job's config from its command line: ``--config PATH.yaml`` plus ``key=value``
    overrides (what every job in jobs/ takes).

    Args:
        cls: The job's config dataclass.
        description: The ``--help`` text (the job's docstring).
        argv: The arguments (None: sys.argv[1:]).
        example_config: The YAML to mention in ``--help``, e.g. benchmarks/configs/bench_memory.yaml.
    """
    import argparse

    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"YAML config (see {example_config})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. repeats=3")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)
