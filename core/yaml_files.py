"""YAML at the edge: plain data only, every failure one ConfigError sentence naming the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError, one_line, printable, show


class YAMLProblem(Exception):
    def __init__(self, what: str, where: str = ""):
        super().__init__(what)
        self.what, self.where = what, where


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` (plain data only, no Python tags), with every failure as one :class:`YAMLProblem`.

    PyYAML's constructors raise more than ``YAMLError`` on malformed scalars: ``!!int`` on an
    empty string is an IndexError, ``2001-02-30`` a ValueError from ``datetime``, deep nesting
    a RecursionError. All of them are the text's fault, so all of them are a config error.
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        tag = re.search(r"constructor for the tag '(tag:yaml.org,2002:)?([^']*)'", problem)
        if tag:  # !!python/object and friends: the safe loader builds plain data only, never objects
            written = f"!!{tag.group(2)}" if tag.group(1) else tag.group(2)
            problem = (f"the tag {show(written)} is not allowed (a config holds plain data: mappings, lists, "
                       "strings, numbers, booleans)")
        raise YAMLProblem(one_line(problem), where) from None
    except RecursionError:
        raise YAMLProblem("it nests too deeply") from None
    except Exception as exc:  # see the docstring: any failure here is the text's
        raise YAMLProblem(one_line(f"{exc.__class__.__name__}: {exc}")) from None


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys given beside a merge override it, as YAML intends
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping says so in its own words
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {show(key)} appears twice in one mapping (keep one)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, kind: str, missing: str) -> Any:
    """The plain data in a YAML file; one ConfigError sentence naming it if it cannot be read or parsed.

    ``kind`` names the file in that sentence ("Config file"); ``missing`` says what to do when it does not exist.
    """
    source = printable(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{kind} {source} does not exist; {missing}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{kind} {source} cannot be read ({exc.__class__.__name__}); pass a UTF-8 YAML file.") from None
    try:
        return parse_yaml(text)
    except YAMLProblem as exc:
        raise ConfigError(f"{source} is not valid YAML{exc.where}: {exc.what}; fix it and run again.") from None
