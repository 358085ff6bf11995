"""Drive's `q` search language and `fields` partial responses, for the subset shardrun uses.

q: comparisons joined with `and`/`or`/`not` and parentheses — `'<id>' in parents`, `name = '...'`,
`name contains '...'`, `mimeType = / != '...'`, `trashed = true|false`, `modifiedTime > '...'`,
`'<email>' in owners|writers|readers`, `properties has { key='k' and value='v' }` excluded.
Strings are single-quoted with backslash escapes (\\' and \\\\), as Drive documents.
"""

from __future__ import annotations

import re

from .model import DriveError, DriveFile, ROLE_RANK

TOKEN = re.compile(r"""\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<op>!=|<=|>=|=|<|>)|(?P<paren>[()])|(?P<word>[A-Za-z_][\w.]*))""")


def invalid_query(q: str) -> DriveError:
    return DriveError(400, "invalid", "Invalid Value", location="q")


def tokenize(q: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(q):
        if q[position:].strip() == "":
            break
        match = TOKEN.match(q, position)
        if not match:
            raise invalid_query(q)
        kind = match.lastgroup
        text = match.group(kind)
        if kind == "string":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        tokens.append((kind, text))
        position = match.end()
    return tokens


class Query:
    """A parsed `q`; `matches(file, drive, viewer)` evaluates it for one file."""

    def __init__(self, q: str | None):
        self.q = q or ""
        self.tokens = tokenize(self.q)
        self.position = 0
        self.tree = self._or() if self.tokens else ("true",)
        if self.position != len(self.tokens):
            raise invalid_query(self.q)

    # recursive descent: or > and > not > comparison
    def _peek(self):
        return self.tokens[self.position] if self.position < len(self.tokens) else (None, None)

    def _take(self):
        token = self._peek()
        if token[0] is None:
            raise invalid_query(self.q)
        self.position += 1
        return token

    def _keyword(self, word: str) -> bool:
        kind, text = self._peek()
        if kind == "word" and text.lower() == word:
            self.position += 1
            return True
        return False

    def _or(self):
        node = self._and()
        while self._keyword("or"):
            node = ("or", node, self._and())
        return node

    def _and(self):
        node = self._not()
        while self._keyword("and"):
            node = ("and", node, self._not())
        return node

    def _not(self):
        if self._keyword("not"):
            return ("not", self._not())
        if self._peek() == ("paren", "("):
            self._take()
            node = self._or()
            if self._take() != ("paren", ")"):
                raise invalid_query(self.q)
            return node
        return self._comparison()

    def _value(self):
        kind, text = self._take()
        if kind == "string":
            return text
        if kind == "word" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise invalid_query(self.q)

    def _comparison(self):
        kind, text = self._peek()
        if kind == "string":
            value = self._value()
            if not self._keyword("in"):
                raise invalid_query(self.q)
            field_kind, collection = self._take()
            if field_kind != "word" or collection not in ("parents", "owners", "writers", "readers"):
                raise invalid_query(self.q)
            return ("in", value, collection)
        field_kind, name = self._take()
        if field_kind != "word" or name not in FIELDS:
            raise invalid_query(self.q)
        if self._keyword("contains"):
            return ("contains", name, self._value())
        op_kind, op = self._take()
        if op_kind != "op" or op not in FIELDS[name]:
            raise invalid_query(self.q)
        return ("cmp", name, op, self._value())

    def matches(self, drive_file: DriveFile, drive, viewer: str) -> bool:
        return _evaluate(self.tree, drive_file, drive, viewer)


FIELDS = {
    "name": {"=", "!="}, "mimeType": {"=", "!="}, "trashed": {"=", "!="}, "starred": {"=", "!="},
    "modifiedTime": {"=", "!=", "<", "<=", ">", ">="}, "createdTime": {"=", "!=", "<", "<=", ">", ">="},
    "fullText": set(),
}


def _field_value(drive_file: DriveFile, name: str, drive):
    if name in ("modifiedTime", "createdTime"):
        resource = drive.resource(drive_file, drive_file.owner)
        return resource[name]
    return {"name": drive_file.name, "mimeType": drive_file.mime_type, "trashed": drive_file.trashed,
            "starred": False, "fullText": drive_file.name}[name]


def _evaluate(node, drive_file, drive, viewer) -> bool:
    op = node[0]
    if op == "true":
        return True
    if op == "and":
        return _evaluate(node[1], drive_file, drive, viewer) and _evaluate(node[2], drive_file, drive, viewer)
    if op == "or":
        return _evaluate(node[1], drive_file, drive, viewer) or _evaluate(node[2], drive_file, drive, viewer)
    if op == "not":
        return not _evaluate(node[1], drive_file, drive, viewer)
    if op == "in":
        value, collection = node[1], node[2]
        if collection == "parents":
            return drive.resolve_id(viewer, value) in drive_file.parents
        if collection == "owners":
            return drive_file.owner == value
        role = drive_file.owner == value and "owner" or drive.role(value, drive_file)
        need = "writer" if collection == "writers" else "reader"
        return role is not None and ROLE_RANK[role] >= ROLE_RANK[need]
    if op == "contains":
        return str(node[2]).lower() in str(_field_value(drive_file, node[1], drive)).lower()
    _, name, comparison, value = node
    actual = _field_value(drive_file, name, drive)
    if name in ("modifiedTime", "createdTime") and isinstance(value, str):
        value = value if value.endswith("Z") else value + "Z"
    if isinstance(actual, bool) != isinstance(value, bool):
        raise invalid_query(str(value))
    return {"=": actual == value, "!=": actual != value, "<": actual < value, "<=": actual <= value,
            ">": actual > value, ">=": actual >= value}[comparison]


# -- fields ------------------------------------------------------------------------------------
def parse_fields(text: str | None):
    """`fields` as a nested dict ({} meaning "the whole value"), or None when absent or `*`."""
    if text is None or text.strip() in ("", "*"):
        return None
    position = 0

    def parse_list(end: str | None):
        nonlocal position
        selection = {}
        while position < len(text):
            match = re.match(r"\s*([\w*]+(?:/[\w*]+)*)\s*", text[position:])
            if not match:
                raise DriveError(400, "invalidParameter", f"Invalid field selection {text}", location="fields")
            path = match.group(1).split("/")
            position += match.end()
            node = selection
            for part in path[:-1]:
                node = node.setdefault(part, {})
            leaf = node.setdefault(path[-1], {})
            if position < len(text) and text[position] == "(":
                position += 1
                leaf.update(parse_list(")"))
            while position < len(text) and text[position] == " ":
                position += 1
            if position < len(text) and text[position] == ",":
                position += 1
                continue
            if end and position < len(text) and text[position] == end:
                position += 1
                return selection
        if end:
            raise DriveError(400, "invalidParameter", f"Invalid field selection {text}", location="fields")
        return selection

    return parse_list(None)


def select(resource, selection):
    """Trims a JSON value to a parsed `fields` selection, as Drive's partial responses do."""
    if selection is None or not selection:
        return resource
    if isinstance(resource, list):
        return [select(item, selection) for item in resource]
    if not isinstance(resource, dict):
        return resource
    if "*" in selection:
        return resource
    return {key: select(resource[key], sub) for key, sub in selection.items() if key in resource}
