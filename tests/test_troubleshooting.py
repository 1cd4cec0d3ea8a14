"""docs/troubleshooting.md lists every error message cloudfs can print, and only those.

The messages are collected from the code with the ast module: every call that
makes a CloudfsError (any subclass, anywhere in cloudfs/), and every call of a
function that returns one built from its arguments (`fail(where, message)`),
with the message's template: literal text, and a placeholder where an f-string
or a concatenation puts a value. An error class with its own __init__ is
followed into it, so `IntegrityError(name, "chunk is truncated")` is
"integrity error in …: chunk is truncated".

The page's entries are the first cells of its tables, in backticks, with `…`
where the message has a value. An entry and a template agree when some message
could match both (both are patterns: literal text and wildcards). Every
template must agree with an entry, and every entry with a template; a template
that is nothing but placeholders (an error passed on: `UsageError(str(error))`)
or has under MIN_LITERAL characters of its own text is not a message of its own.
"""

from __future__ import annotations

import ast
import itertools
import re
from functools import lru_cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "cloudfs"
DOC = ROOT / "docs" / "troubleshooting.md"

HOLE = "\0"              # a placeholder in a template
MIN_LITERAL = 8
MAX_TEMPLATES = 16       # alternatives of one message before giving up on spelling them out

Template = tuple[str, ...]     # parts: literal text, or HOLE


# -- the code's messages ---------------------------------------------------------------------


class Collector:
    def __init__(self, package: Path):
        self.modules = {path: ast.parse(path.read_text(), str(path)) for path in sorted(package.rglob("*.py"))}
        self.constants = self._constants()
        self.classes = self._error_classes()
        self.makers = self._makers()
        self.templates: dict[Template, set[str]] = {}    # template -> where (file:line)

    def _constants(self) -> dict[str, str]:
        """Module-level names bound to one string (DIRECTORIES = "directories")."""
        found: dict[str, set[str]] = {}
        for tree in self.modules.values():
            for node in tree.body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                        and isinstance(node.value.value, str):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            found.setdefault(target.id, set()).add(node.value.value)
        return {name: values.pop() for name, values in found.items() if len(values) == 1}

    def _error_classes(self) -> dict[str, ast.ClassDef | None]:
        classes: dict[str, ast.ClassDef | None] = {"CloudfsError": None}
        changed = True
        while changed:
            changed = False
            for tree in self.modules.values():
                for node in ast.walk(tree):
                    if isinstance(node, ast.ClassDef) and node.name not in classes:
                        if any(_name_of(base) in classes for base in node.bases):
                            classes[node.name] = node
                            changed = True
        return classes

    def _makers(self) -> dict[str, tuple[ast.arguments, ast.expr]]:
        """Callables that build an error's message from their parameters: error classes
        with an __init__ (their super().__init__ argument), and functions that return
        an error (`return UsageError(f"...{message}")`). name -> (parameters, message)."""
        makers = {}
        for name, node in self.classes.items():
            init = node and next((f for f in node.body if isinstance(f, ast.FunctionDef)
                                  and f.name == "__init__"), None)
            if init is None:
                continue
            calls = [n for n in ast.walk(init) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                     and n.func.attr == "__init__" and n.args]
            assert calls, f"{name}.__init__ passes no message to super().__init__"
            makers[name] = (init.args, calls[0].args[0])
        for tree in self.modules.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and node.name not in self.classes:
                    returned = [n.value for n in ast.walk(node) if isinstance(n, ast.Return)
                                and isinstance(n.value, ast.Call) and _name_of(n.value.func) in self.classes]
                    if returned and returned[0].args:
                        makers[node.name] = (node.args, returned[0].args[0])
        return makers

    def collect(self) -> dict[Template, set[str]]:
        for path, tree in self.modules.items():
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _name_of(node.func) in self.classes | self.makers:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    for template in self.call_templates(node):
                        if template is not None and _literal_length(template) >= MIN_LITERAL:
                            self.templates.setdefault(_joined(template), set()).add(where)
        return self.templates

    def call_templates(self, call: ast.Call) -> list[Template | None]:
        name = _name_of(call.func)
        if name not in self.makers:
            message = call.args[0] if call.args else next((k.value for k in call.keywords
                                                           if k.arg == "message"), None)
            return [None] if message is None else self.templates_of(message, {})
        parameters, message = self.makers[name]
        return self.templates_of(message, self._bind(parameters, call))

    def _bind(self, parameters: ast.arguments, call: ast.Call) -> dict[str, list[Template | None]]:
        names = [a.arg for a in parameters.args]
        if names and names[0] == "self":
            names = names[1:]
        defaults = dict(zip(reversed(names), reversed(parameters.defaults)))
        given = dict(zip(names, call.args)) | {k.arg: k.value for k in call.keywords if k.arg}
        env = {}
        for name in names:
            if name in given:
                env[name] = self.templates_of(given[name], {})
            elif name in defaults:
                env[name] = self.templates_of(defaults[name], {})
        return env

    def templates_of(self, node: ast.expr, env: dict) -> list[Template | None]:
        """Every template `node` can give (None: no message, e.g. a None default)."""
        if isinstance(node, ast.Constant):
            return [None] if node.value is None else [(str(node.value),)]
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.Name) and node.id in self.constants:
            return [(self.constants[node.id],)]
        if isinstance(node, ast.JoinedStr):
            parts = [self._formatted(v, env) if isinstance(v, ast.FormattedValue) else self.templates_of(v, env)
                     for v in node.values]
            return self._concatenations(parts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._concatenations([self.templates_of(node.left, env), self.templates_of(node.right, env)])
        if isinstance(node, ast.IfExp):
            return self.templates_of(node.body, env) + self.templates_of(node.orelse, env)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            first, rest = self.templates_of(node.values[0], env), node.values[1:]
            later = self.templates_of(ast.BoolOp(ast.Or(), rest) if len(rest) > 1 else rest[0], env)
            return [t for t in first if t is not None] + (later if None in first or
                                                           any(t == (HOLE,) for t in first) else [])
        return [(HOLE,)]

    def _formatted(self, value: ast.FormattedValue, env: dict) -> list[Template | None]:
        """`{x}` in an f-string: x's own templates where it has them (a parameter, a
        string constant, a nested f-string or conditional), else a placeholder."""
        inner = value.value
        if isinstance(inner, (ast.JoinedStr, ast.IfExp)) or (
                isinstance(inner, ast.Name) and (inner.id in env or inner.id in self.constants)):
            return self.templates_of(inner, env)
        return [(HOLE,)]

    def _concatenations(self, parts: list[list[Template | None]]) -> list[Template | None]:
        combined = [tuple(itertools.chain.from_iterable(t or ("",) for t in choice))
                    for choice in itertools.product(*parts)]
        return combined if len(combined) <= MAX_TEMPLATES else [(HOLE,)]


def _name_of(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _joined(template: Template) -> Template:
    """Adjacent literals merged, adjacent holes one."""
    parts = re.split(f"({HOLE}+)", "".join(template))
    return tuple(HOLE if part.startswith(HOLE) else part for part in parts if part)


def _literal_length(template: Template) -> int:
    return sum(len(part) for part in template if part != HOLE)


# -- the page's entries ----------------------------------------------------------------------


def entries() -> list[str]:
    found = []
    for line in DOC.read_text().splitlines():
        cell = line.split(" | ")[0] if line.startswith("| `") else None
        if cell is None:
            continue
        match = re.fullmatch(r"\| (`+) ?(.*?) ?\1", cell.rstrip())
        assert match, f"troubleshooting.md: the first cell is not one code span: {line}"
        found.append(match[2].replace("\\|", "|"))
    return found


def _pattern(entry: str) -> Template:
    return _joined(tuple(HOLE if part == "…" else part for part in re.split("(…)", entry) if part))


# -- do they agree? --------------------------------------------------------------------------


def agree(a: Template, b: Template) -> bool:
    """Whether some text matches both patterns (each a sequence of literals and holes)."""
    x, y = "".join(a), "".join(b)

    @lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(x) and j == len(y):
            return True
        if i < len(x) and x[i] == HOLE and (match(i + 1, j) or (j < len(y) and match(i, j + 1))):
            return True
        if j < len(y) and y[j] == HOLE and (match(i, j + 1) or (i < len(x) and match(i + 1, j))):
            return True
        return i < len(x) and j < len(y) and x[i] == y[j] != HOLE and match(i + 1, j + 1)

    if not (_prefix(x).startswith(_prefix(y)) or _prefix(y).startswith(_prefix(x))):
        return False
    return match(0, 0)


def _prefix(text: str) -> str:
    return text.split(HOLE, 1)[0]


def shown(template: Template) -> str:
    return "".join("…" if part == HOLE else part for part in template)


@pytest.fixture(scope="module")
def templates():
    return Collector(PACKAGE).collect()


def test_the_collector_finds_the_messages_it_must(templates):
    found = {shown(t) for t in templates}
    assert "wrong passphrase: no key slot of … opens with it" in found
    assert "integrity error in …: chunk is truncated" in found                  # through __init__
    assert "…: [directories.…] needs source = \"/the/directory\"" in found       # through fail()
    assert "password command … failed (exit status …)" in found                  # both sides of an if
    assert "password command … failed (exit status …): …" in found
    assert "object … is missing from the store" in found                         # a default message


def test_every_message_the_code_can_print_is_in_troubleshooting_md(templates):
    patterns = [_pattern(entry) for entry in entries()]
    missing = sorted(f"{shown(t)}    ({', '.join(sorted(templates[t]))})" for t in templates
                     if not any(agree(t, p) for p in patterns))
    assert not missing, "docs/troubleshooting.md lacks these messages (… is a value):\n  " + "\n  ".join(missing)


def test_every_entry_of_troubleshooting_md_is_a_message_of_the_code(templates):
    stale = [entry for entry in entries() if not any(agree(_pattern(entry), t) for t in templates)]
    assert not stale, "docs/troubleshooting.md lists messages the code no longer prints:\n  " + "\n  ".join(stale)
    short = [entry for entry in entries() if _literal_length(_pattern(entry)) < MIN_LITERAL]
    assert not short, f"entries must say more than their placeholders: {short}"


if __name__ == "__main__":      # python -m tests.test_troubleshooting: the messages, one a line
    for template, where in sorted(Collector(PACKAGE).collect().items(), key=lambda item: sorted(item[1])):
        print(f"{shown(template)}    [{', '.join(sorted(where))}]")
