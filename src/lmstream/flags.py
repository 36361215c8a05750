"""Command-line flags derived from one typed definition: a pydantic model whose fields are flags.

Each field of an options model is declared once with :func:`flag` (help text, flag names, group,
default and range); :func:`add_flags` builds the argparse options from the fields, and
:func:`from_args` validates the parsed values through the same model, so adding an option is
one edit and every default lives in one place (the field). Validation errors become one line
per problem naming the flag (``--max-samples: must be at least 1 (given: 0)``), raised as
:class:`lmstream.errors.ConfigError`.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmstream.errors import ConfigError


def flag(
    default: Any = ...,
    help: str = "",
    *,
    group: str | None = None,
    names: tuple[str, ...] = (),
    negate: str | None = None,
    metavar: str | None = None,
    nargs: str | None = None,
    repeat: bool = False,
    choices: typing.Sequence[str] | None = None,
    **constraints: Any,
) -> Any:
    """A field that is also a flag.

    Args:
        default: the default (omit it for a required flag).
        help: the help line; say the default in words as "(default: ...)" when the value alone
            would not explain it (None, an environment variable); otherwise it is added.
        group: the help section the flag is listed under.
        names: extra spellings (``--name`` for ``--subset``).
        negate: for a bool field that defaults to True, the flag that sets it False
            (``--no-progress`` for ``progress``).
        metavar, nargs, choices: as in argparse (lists default to ``nargs="+"``).
        repeat: a list field given by repeating the flag (``--dataset A --dataset B``).
        constraints: pydantic's range checks (``ge=1``...), checked by the model.
    """
    cli = {"group": group, "names": names, "negate": negate, "metavar": metavar,
           "nargs": nargs, "repeat": repeat, "choices": choices}  # fmt: skip
    return Field(default, description=help, json_schema_extra={"cli": cli}, **constraints)


class Options(BaseModel):
    """Base of a command's options: unknown fields are errors; construction errors name flags."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise ConfigError(flag_errors(err, type(self))) from None


def flag_name(model: type[BaseModel], field: str) -> str:
    """The flag a field is set by (``max_samples`` -> ``--max-samples``)."""
    info = model.model_fields.get(field)
    cli = _cli(info) if info is not None else {}
    return cli.get("negate") or "--" + field.replace("_", "-")


def flag_errors(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem: the flag, what is wrong, the value given."""
    lines = []
    for e in err.errors(include_url=False):
        where = flag_name(model, str(e["loc"][0])) if e["loc"] else ""
        ctx, given = e.get("ctx") or {}, e.get("input")
        if e["type"] in ("greater_than_equal", "greater_than"):
            bound = ctx.get("ge", ctx.get("gt"))
            what = f"must be at least {bound}" if "ge" in ctx else f"must be above {bound}"
            message = f"{what} (given: {given})"
        elif e["type"] == "value_error":  # our own validators word the whole message
            message = str(ctx.get("error", e["msg"]))
        else:
            message = f"{e['msg'][0].lower()}{e['msg'][1:]} (given: {given!r})"
        lines.append(f"{where}: {message}" if where else message)
    return lines


def _cli(info: Any) -> dict:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return extra.get("cli", {})


def _element_type(annotation: Any) -> tuple[Any, bool]:
    """(the type argparse converts one value with, whether the field is a list)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    is_list = typing.get_origin(annotation) is list
    if is_list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Annotated:  # PositiveFloat and the like
        annotation = typing.get_args(annotation)[0]
    return annotation, is_list


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add one argparse option per field of ``model``, in field order, under the fields' groups."""
    groups: dict[str | None, Any] = {None: parser}
    for name, info in model.model_fields.items():
        cli = _cli(info)
        group = cli.get("group")
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        kind, is_list = _element_type(info.annotation)
        names = [flag_name(model, name), *cli.get("names", ())]
        kwargs: dict[str, Any] = {"dest": name, "help": info.description}
        if info.is_required():
            kwargs["required"] = True
        else:
            kwargs["default"] = info.get_default(call_default_factory=True)
        if kind is bool:
            kwargs["action"] = "store_false" if cli.get("negate") else "store_true"
        elif is_list and cli.get("repeat"):
            kwargs.update(action="append", type=kind, default=None)
        elif is_list:
            kwargs.update(nargs=cli.get("nargs") or "+", type=kind)
        elif kind is not str:
            kwargs["type"] = kind
        for key in ("metavar", "choices"):
            if cli.get(key) is not None:
                kwargs[key] = list(cli[key]) if key == "choices" else cli[key]
        groups[group].add_argument(*names, **kwargs)


def from_args(model: type[Options], args: argparse.Namespace, **overrides: Any) -> Any:
    """The options model built (and validated) from parsed flags; ``overrides`` replace values
    a command normalises first (a JSON list given as one argument, say)."""
    values = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    values = {k: v for k, v in values.items() if v is not None or not _repeat(model, k)}
    return model(**{**values, **overrides})


def _repeat(model: type[BaseModel], name: str) -> bool:
    return bool(_cli(model.model_fields[name]).get("repeat"))
