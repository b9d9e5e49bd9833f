"""Equality-based label selectors, as in Kubernetes: "app=web,tier!=db,gpu,!spot"."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from corral.validation import LABEL_NAME, LABEL_PREFIX, LABEL_VALUE


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "=":
            return labels.get(self.key) == self.value
        if self.operator == "!=":
            return labels.get(self.key) != self.value
        if self.operator == "exists":
            return self.key in labels
        return self.key not in labels


class SelectorError(ValueError):
    pass


def _check_key(key: str, text: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if not LABEL_NAME.match(name) or (slash and not LABEL_PREFIX.match(prefix)):
        raise SelectorError(f"label selector {text!r}: {key!r} is not a valid label key")
    return key


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """Parse a selector; an empty one matches everything."""
    requirements: list[Requirement] = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            operator = "!="
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=", 1).split("=", 1))
            operator = "="
        elif term.startswith("!"):
            key, value, operator = term[1:].strip(), "", "!exists"
        else:
            key, value, operator = term, "", "exists"
        _check_key(key, text)
        if not LABEL_VALUE.match(value):
            raise SelectorError(f"label selector {text!r}: {value!r} is not a valid label value")
        requirements.append(Requirement(key, operator, value))
    return tuple(requirements)


def matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    return all(requirement.matches(labels) for requirement in requirements)
