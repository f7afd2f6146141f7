"""What the spec's unions are, read from the spec itself, so that code which must know them
(error paths in ``app.main``, the documented experiment kinds) cannot fall behind when a
member or a union field is added."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator
from pydantic.fields import FieldInfo

from app import experiment_spec as e
from app import spec as s


def _members(annotation: Any) -> Iterator[Any]:
    """The leaves of an annotation: through Annotated, unions, Optional and containers."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _members(get_args(annotation)[0])
    elif origin in (Union, types.UnionType, list, tuple, dict):
        for arg in get_args(annotation):
            yield from _members(arg)
    else:
        yield annotation


def _models(annotation: Any) -> list[type[BaseModel]]:
    return [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]


def experiment_classes() -> list[type[BaseModel]]:
    """The members of the experiment union, in declaration order."""
    return _models(e.Experiment)


def experiment_kinds() -> list[str]:
    """Each experiment's ``kind`` tag, in declaration order."""
    return [get_args(cls.model_fields["kind"].annotation)[0] for cls in experiment_classes()]


def _is_tag(meta: Any) -> bool:
    return isinstance(meta, Discriminator) or (isinstance(meta, FieldInfo)
                                               and meta.discriminator is not None)


def _is_tagged_annotation(ann: Any) -> bool:
    """A tagged union, optional or not."""
    options = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    present = [a for a in options if a is not type(None)]
    return (len(present) == 1 and get_origin(present[0]) is Annotated
            and any(map(_is_tag, get_args(present[0])[1:])))


def _is_tagged(field: FieldInfo) -> bool:
    """A field whose value (not an item of it) is a tagged union."""
    return (field.discriminator is not None or any(map(_is_tag, field.metadata))
            or _is_tagged_annotation(field.annotation))


def _has_tagged_items(field: FieldInfo) -> bool:
    """A list field whose every item is a tagged union."""
    ann = field.annotation
    return get_origin(ann) is list and _is_tagged_annotation(get_args(ann)[0])


def _fields(has: Callable[[FieldInfo], bool]) -> frozenset[str]:
    """The names of the fields, at any depth of a job or an experiment, that ``has``."""
    seen: set[type[BaseModel]] = set()
    found: set[str] = set()
    todo: list[type[BaseModel]] = [s.JobSpec, *experiment_classes()]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if has(field):
                found.add(name)
            todo.extend(_models(field.annotation))
    return frozenset(found)


EXPERIMENT_KINDS = frozenset(experiment_kinds())
# pydantic puts the member's tag after such a field's name (or after the item's index) in an
# error's loc, a segment no user wrote
UNION_FIELDS = _fields(_is_tagged)
UNION_LIST_FIELDS = _fields(_has_tagged_items)
