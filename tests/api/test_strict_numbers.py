"""A JSON boolean is never a number, and every list has a length cap.

Both are checked by walking the JSON schema the API publishes for JobSpec and every
experiment kind, so a field added later is covered without editing this file: for each
integer/number leaf (object properties, list items, tuple members, union members), an
otherwise valid body gets ``true`` there and must be refused with 422 naming that path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from app import experiment_spec as e
from app.spec import JobSpec

SCHEMAS = {
    "/v1/jobs": JobSpec.model_json_schema(),
    "/v1/experiments": TypeAdapter(e.Experiment).json_schema(),
}


@dataclass(frozen=True)
class Step:
    """One move from a schema node to a child: a property, a list item, a tuple member,
    a dict value, or the choice of one union member (which adds nothing to the path)."""

    kind: str  # "prop", "item", "value", "variant"
    key: Any
    node: dict[str, Any]


class Walker:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.root, self.defs = schema, schema.get("$defs", {})

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def children(self, node: dict[str, Any]) -> Iterator[Step]:
        node = self.resolve(node)
        for member in node.get("anyOf", []) + node.get("oneOf", []):
            yield Step("variant", None, member)
        for name, prop in node.get("properties", {}).items():
            yield Step("prop", name, prop)
        for i, member in enumerate(node.get("prefixItems", [])):
            yield Step("item", i, member)
        if isinstance(node.get("items"), dict):
            yield Step("item", 0, node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            yield Step("value", "optimizer.lr", node["additionalProperties"])

    def leaves(self, node: dict[str, Any], seen: frozenset[str] = frozenset()
               ) -> Iterator[list[Step]]:
        """Paths to every integer/number leaf (each $ref expanded once per path)."""
        ref = node.get("$ref")
        if ref in seen:
            return
        resolved = self.resolve(node)
        if resolved.get("type") in ("integer", "number"):
            yield []
            return
        for step in self.children(node):
            for rest in self.leaves(step.node, seen | {ref} if ref else seen):
                yield [step, *rest]

    def minimal(self, node: dict[str, Any]) -> Any:
        """A valid instance: defaults and examples first, then the required fields."""
        node = self.resolve(node)
        for key in ("const", "default"):
            if key in node:
                return node[key]
        if node.get("examples"):
            return node["examples"][0]
        if "enum" in node:
            return node["enum"][0]
        if "anyOf" in node or "oneOf" in node:
            return self.minimal((node.get("anyOf") or node["oneOf"])[0])
        if node.get("type") == "object" or "properties" in node:
            return self.object_of(node)
        if "prefixItems" in node:
            return [self.minimal(m) for m in node["prefixItems"]]
        if node.get("type") == "array":
            return [self.minimal(node["items"]) for _ in range(node.get("minItems", 0))]
        return {"integer": 1, "number": 0.5, "string": "x", "boolean": True}[node["type"]]

    def object_of(self, node: dict[str, Any]) -> dict[str, Any]:
        props = node.get("properties", {})
        tags = {n for n, p in props.items() if "const" in self.resolve(p)}  # union tags
        return {n: self.minimal(props[n]) for n in [*node.get("required", []), *sorted(tags)]}

    def place(self, node: dict[str, Any], steps: list[Step]) -> Any:
        """``node``'s minimal instance with ``true`` at the end of ``steps``."""
        if not steps:
            return True
        step, rest = steps[0], steps[1:]
        if step.kind == "variant":
            return self.place(step.node, rest)
        node = self.resolve(node)
        if step.kind == "prop":
            return {**self.object_of(node), step.key: self.place(step.node, rest)}
        if step.kind == "value":
            return {step.key: self.place(step.node, rest)}
        if "prefixItems" in node:
            items = [self.minimal(m) for m in node["prefixItems"]]
        else:
            items = [self.minimal(node["items"]) for _ in range(max(1, node.get("minItems", 1)))]
        items[step.key] = self.place(step.node, rest)
        return items


def json_path(steps: list[Step]) -> str:
    return ".".join(str(s.key) for s in steps if s.kind != "variant")


def boolean_cases() -> list[tuple[str, Any, str]]:
    cases: list[tuple[str, Any, str]] = []
    base_of: list[dict[str, Any]] = []  # the one experiment kind whose base is walked
    for url, schema in SCHEMAS.items():
        walker = Walker(schema)
        for steps in walker.leaves(schema):
            path = json_path(steps)
            if path.startswith("base."):
                base_of = base_of or [steps[0].node]
                if steps[0].node != base_of[0]:
                    continue  # every kind's base is the same JobSpec: one walk suffices
            cases.append((url, walker.place(schema, steps), path))
    return cases


CASES = boolean_cases()


def test_the_walk_reaches_every_kind_of_number() -> None:
    """The walk must find the leaves the issue named (else the test below proves little)."""
    paths = {path for _url, _body, path in CASES}
    assert {"schedule.min_lr", "optimizer.betas.1", "model.hidden.0", "training.epochs",
            "training.batch_size", "data.source.n_samples", "data.rows.weights.0",
            "base.training.epochs", "k", "parameters.optimizer.lr.log_uniform.0",
            "parameters.optimizer.lr.int_uniform.1", "optimizers.0.lr"} <= paths, sorted(paths)
    assert len(CASES) > 250


def test_a_boolean_is_not_a_number(client: TestClient) -> None:
    """One test, one database, every leaf (a fixture per case costs minutes)."""
    failures = []
    for url, body, path in CASES:
        r = client.post(url, json=body)
        locs = [f["loc"] for f in r.json()["error"]["fields"]] if r.status_code == 422 else []
        # the leaf is named; an untagged union (int | "full", values | ranges) also reports
        # its other members, never outside the field
        named = any(loc == path or loc.startswith(path + ".") for loc in locs)
        if not named or any(loc.split(".")[0] != path.split(".")[0] for loc in locs):
            failures.append((url, path, r.status_code, locs))
    assert failures == []


def test_a_number_still_parses_and_an_int_is_a_float(client: TestClient) -> None:
    from tests.conftest import tiny_spec

    spec = tiny_spec(optimizer__lr=1, schedule={"kind": "cosine", "min_lr": 0})
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["optimizer"]["lr"] == 1.0


def arrays(walker: Walker, node: dict[str, Any], path: str,
           seen: frozenset[str] = frozenset()) -> Iterator[tuple[str, dict[str, Any]]]:
    ref = node.get("$ref")
    if ref in seen:
        return
    resolved = walker.resolve(node)
    if resolved.get("type") == "array" or isinstance(resolved.get("additionalProperties"), dict):
        yield path, resolved
    for step in walker.children(node):
        sub = path if step.kind == "variant" else f"{path}.{step.key}"
        yield from arrays(walker, step.node, sub, seen | {ref} if ref else seen)


@pytest.mark.parametrize("url", SCHEMAS)
def test_every_list_and_map_has_a_length_cap(url: str) -> None:
    walker = Walker(SCHEMAS[url])
    found = list(arrays(walker, SCHEMAS[url], "body"))
    assert len(found) > 5
    uncapped = [path for path, node in found
                if "maxItems" not in node and "maxProperties" not in node
                and "prefixItems" not in node]  # a tuple has its fixed length
    assert uncapped == []


@pytest.mark.parametrize(("path", "value"), [
    ("model.hidden", [8] * 257),
    ("schedule.milestones", list(range(1, 10_002))),
    ("loss.class_weights", [1.0] * 10_001),
])
def test_an_over_long_list_is_a_422_naming_it(client: TestClient, path: str,
                                              value: list[Any]) -> None:
    head, field = path.split(".")
    kinds = {"model": "mlp", "schedule": "multistep", "loss": "cross_entropy"}
    r = client.post("/v1/jobs", json={head: {"kind": kinds[head], field: value}})
    assert r.status_code == 422
    assert [f["loc"] for f in r.json()["error"]["fields"]] == [path]
    assert "at most" in r.json()["error"]["message"]
