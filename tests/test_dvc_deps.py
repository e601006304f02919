"""dvc.yaml cannot drift from the code: every stage depends on each project module its command imports, and
declares exactly the params its command reads.

Imports are read with `ast` from the sources (including imports inside functions, which the commands use to
defer torch), from apes_cli/commands/<command>.py on, transitively within apes_cli/ and stages/. Params are
read from the command function: the Params it loads may only be used as `<params>.<section>[.<key>...]`
(the stage functions get those values, never the whole Params). In the command function only the branches the
stage's command line takes are counted, for params (`--seed 3` means `params.seed` is not read) and for imports
(`evaluate --pretrained` imports the pretrained stage, the other evaluate stages do not).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from apes_cli.main import app
from stages.core.choices import Source
from stages.core.config import Params

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("apes_cli", "stages")
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def definition(stage: dict[str, Any]) -> dict[str, Any]:
    """The stage body (a `foreach` stage keeps it under `do`)."""
    return stage.get("do", stage)


def commands(stage: dict[str, Any]) -> list[str]:
    """The `apes-cli` subcommands a stage runs (`${data.source}` runs whichever source params pick)."""
    name = re.search(r"apes-cli\s+(\S+)", definition(stage)["cmd"]).group(1)
    return list(Source) if name == "${data.source}" else [name]


def command_line(stage: dict[str, Any], command: str) -> list[str]:
    """The arguments after `apes-cli <command>`, `${...}` left as placeholders."""
    cmd = re.sub(r"\$\{[^}]+\}", "X", definition(stage)["cmd"].replace("${data.source}", command))
    words = shlex.split(cmd)
    return words[words.index("apes-cli") + 2:]


def module_file(name: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def import_targets(node: ast.AST, path: Path) -> set[Path]:
    """Project modules one import statement names (`from pkg import mod` counts mod); none for other nodes."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        assert node.level == 0, f"{path}: relative import; the project imports absolutely"
        names = [f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}") else node.module
                 for a in node.names]
    else:
        return set()
    return {file for file in map(module_file, names) if file is not None}


def imported_files(path: Path) -> set[Path]:
    """Project modules one source file imports, anywhere in it."""
    return set().union(*(import_targets(node, path) for node in ast.walk(ast.parse(path.read_text(), str(path)))))


def command_imports(command: str, arguments: list[str] | None) -> set[Path]:
    """Project modules a command module imports: at its top, and in the branches of `command` that `arguments`
    take (every branch when None)."""
    path = ROOT / "apes_cli" / "commands" / f"{command}.py"
    if arguments is None:
        return imported_files(path)
    tree = ast.parse(path.read_text(), str(path))
    found = set().union(*(import_targets(node, path) for node in tree.body))
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "command")
    return found | _ParamsReads(function, _option_values(command, arguments), path).imports


def closure(command: str, arguments: list[str] | None = None) -> set[Path]:
    """The command module and every project module it reaches through imports (on the command line's branches)."""
    start = ROOT / "apes_cli" / "commands" / f"{command}.py"
    todo, seen = list(command_imports(command, arguments)), {start}
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path))
    return seen


def code_deps(stage: dict[str, Any]) -> list[str]:
    """The deps of a stage inside the project's code packages."""
    return [dep for dep in definition(stage).get("deps", []) if dep.split("/")[0] in PACKAGES]


def uncovered(stage: dict[str, Any]) -> list[str]:
    """Modules the stage's commands import that none of its deps (a file, or a folder holding it) covers."""
    deps = [ROOT / dep for dep in code_deps(stage)]
    modules = set().union(*(closure(command, command_line(stage, command)) for command in commands(stage)))
    return sorted(str(m.relative_to(ROOT)) for m in modules
                  if not any(m == dep or dep in m.parents for dep in deps))


@pytest.mark.parametrize("name", list(DVC))
def test_every_module_a_stage_imports_is_one_of_its_deps(name: str) -> None:
    assert uncovered(DVC[name]) == [], f"dvc.yaml stage {name!r}: add these (or their layer folder) to deps"


@pytest.mark.parametrize("name", list(DVC))
def test_every_code_dep_exists_and_is_needed(name: str) -> None:
    for dep in code_deps(DVC[name]):
        assert (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"
        trimmed = copy.deepcopy(DVC[name])
        definition(trimmed)["deps"].remove(dep)
        assert uncovered(trimmed), f"{name}: nothing the stage imports needs {dep}, or another dep covers it too"


def test_a_removed_dep_is_caught() -> None:
    train = copy.deepcopy(DVC["train_seen"])
    definition(train)["deps"].remove("stages/learning")
    assert "stages/learning/models.py" in uncovered(train)


def test_package_inits_import_nothing_of_the_project() -> None:
    """The walk does not follow the __init__.py a dotted import runs on its way; they must not matter."""
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            assert imported_files(init) == set(), f"{init} imports project modules"


def test_imports_run_one_way() -> None:
    """apes_cli -> stages/<stage>.py -> layer folders -> stages/core: a layer never reaches back up."""
    for path in (ROOT / "stages").rglob("*.py"):
        layer = path.relative_to(ROOT / "stages").parts
        if len(layer) == 1:
            continue
        for target in imported_files(path):
            inside = target.relative_to(ROOT).parts
            assert inside[0] == "stages" and len(inside) > 2, f"{path} imports {target}, above its layer"
            assert layer[0] != "core" or inside[1] == "core", f"{path} imports {target}; core imports only core"


# --- params -------------------------------------------------------------------------------------------------

CLICK = typer.main.get_command(app)


def _option_values(command: str, arguments: list[str]) -> dict[str, Any]:
    """Per command-function parameter: True/False for flags, "given" for an option on the line, else its default."""
    values: dict[str, Any] = {}
    for param in CLICK.commands[command].params:
        if param.param_type_name != "option":
            continue
        given = any(opt in arguments for opt in param.opts)
        values[param.name] = (given if param.is_flag else "given") if given else param.default
    return values


class _ParamsReads:
    """The params keys one command function reads, and the project modules it imports, on the branches the given
    command line takes."""

    def __init__(self, function: ast.FunctionDef, options: dict[str, Any], path: Path = ROOT) -> None:
        self.options, self.path, self.keys, self.imports = options, path, set(), set()
        self.names = {target.id for node in ast.walk(function) if isinstance(node, ast.Assign)
                      and self.loads(node.value) for target in node.targets if isinstance(target, ast.Name)}
        self.block(function.body)

    @staticmethod
    def loads(node: ast.AST) -> bool:
        """Whether the node is a `load_params(...)` call."""
        return isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_params"

    def decide(self, test: ast.expr) -> bool | None:
        """The truth of a test on the command's options, when the command line settles it."""
        if isinstance(test, ast.Name) and test.id in self.options:
            value = self.options[test.id]
            return None if value == "given" else bool(value)
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self.decide(test.operand)
            return None if inner is None else not inner
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id in self.options
                and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Is, ast.IsNot))
                and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None):
            is_none = self.options[test.left.id] is None
            return is_none if isinstance(test.ops[0], ast.Is) else not is_none
        return None

    def block(self, statements: list[ast.stmt]) -> bool:
        """Visit statements in order; True once one of them surely returns."""
        for statement in statements:
            if isinstance(statement, ast.Return):
                self.visit(statement)
                return True
            if isinstance(statement, ast.If):
                self.visit(statement.test)
                taken = self.decide(statement.test)
                branches = [statement.body] if taken else [statement.orelse] if taken is False else []
                if not branches:
                    self.block(statement.body)
                    self.block(statement.orelse)
                elif self.block(branches[0]):
                    return True
            elif isinstance(statement, ast.Try):
                self.block(statement.body)
                for handler in statement.handlers:
                    self.block(handler.body)
                self.block(statement.finalbody)
            else:
                self.visit(statement)
        return False

    def visit(self, node: ast.AST) -> None:
        """Collect params reads and imports in one node, skipping branches the command line rules out."""
        self.imports |= import_targets(node, self.path)
        if isinstance(node, ast.IfExp):
            self.visit(node.test)
            taken = self.decide(node.test)
            for branch, wanted in ((node.body, True), (node.orelse, False)):
                if taken in (None, wanted):
                    self.visit(branch)
            return
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self.visit(value)
                if self.decide(value) is isinstance(node.op, ast.Or):
                    return
            return
        if isinstance(node, ast.Assign) and self.loads(node.value):
            return
        chain, root = [], node
        while isinstance(root, ast.Attribute):
            chain.insert(0, root.attr)
            root = root.value
        if self.loads(root):
            self.visit(root.func)
            for argument in root.args:
                self.visit(argument)
        if self.loads(root) or isinstance(root, ast.Name) and root.id in self.names:
            assert chain, f"line {node.lineno}: the whole Params is handed on; pass the sections or values it needs"
            self.keys.add(".".join(chain))
            return
        for child in ast.iter_child_nodes(node):
            self.visit(child)


def params_read(command: str, arguments: list[str]) -> set[str]:
    """The params keys `apes-cli <command> <arguments>` reads."""
    tree = ast.parse((ROOT / "apes_cli" / "commands" / f"{command}.py").read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "command")
    return _ParamsReads(function, _option_values(command, arguments)).keys


def _covers(key: str, read: str) -> bool:
    return read == key or read.startswith(f"{key}.")


def _fields(key: str) -> set[str]:
    """The keys of a params section (read whole, it reads each of them); any other key is itself."""
    value: Any = Params()
    for part in key.split("."):
        value = getattr(value, part, None)
    return {f"{key}.{field.name}" for field in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else {key}


def params_problems(stage: dict[str, Any]) -> list[str]:
    """Keys read but not declared (nor in the command line, whose change DVC sees, nor listed in the stage's
    `meta.unwatched_params` as read but changing no output), and keys declared or listed but unread."""
    body = definition(stage)
    interpolated = set(re.findall(r"\$\{([^}]+)\}", body["cmd"]))
    reads = {key for command in commands(stage) for key in params_read(command, command_line(stage, command))}
    reads = {key for key in reads if not any(_covers(i, key) for i in interpolated)}
    declared = body.get("params", [])
    unwatched = body.get("meta", {}).get("unwatched_params", [])
    assert all(isinstance(key, str) for key in declared), "params come from params.yaml, named by key"
    named = [*declared, *unwatched]
    reads = {field for key in reads for field in
             (_fields(key) if any(_covers(key, n) and n != key for n in named) else {key})}
    return ([f"reads {key} but does not declare it" for key in sorted(reads)
             if not any(_covers(d, key) for d in named)]
            + [f"declares {key} but never reads it" for key in named
               if not any(_covers(key, r) for r in reads)])


@pytest.mark.parametrize("name", list(DVC))
def test_every_option_on_a_stage_command_line_exists(name: str) -> None:
    for command in commands(DVC[name]):
        known = {opt for param in CLICK.commands[command].params for opt in param.opts}
        arguments = command_line(DVC[name], command)
        assert [word for word in arguments if word.startswith("--") and word not in known] == [], command


@pytest.mark.parametrize("name", list(DVC))
def test_each_stage_declares_exactly_the_params_its_command_reads(name: str) -> None:
    assert params_problems(DVC[name]) == [], f"dvc.yaml stage {name!r}"


def test_a_wrong_params_declaration_is_caught() -> None:
    train = copy.deepcopy(DVC["crop"])
    definition(train)["params"] = ["crop", "evaluate.crops_per_track"]
    assert params_problems(train) == ["declares evaluate.crops_per_track but never reads it"]
    definition(train)["params"] = []
    assert params_problems(train) == ["reads crop but does not declare it"]


def test_options_on_the_command_line_replace_the_params_they_default_from() -> None:
    assert params_read("synth", ["--out", "X"]) == {"seed", "synth"}
    assert params_read("synth", ["--seed", "X", "--out", "X"]) == {"synth"}
    assert params_read("decode", []) == {"decode", "data.raw_dir"}


def test_a_section_read_whole_needs_each_key_declared_or_unwatched() -> None:
    download = copy.deepcopy(DVC["download"])
    definition(download)["params"].remove("download.limit")
    assert params_problems(download) == ["reads download.limit but does not declare it"]
    definition(download)["meta"]["unwatched_params"].append("download.nothing")
    assert params_problems(download)[-1] == "declares download.nothing but never reads it"


def test_only_the_pretrained_evaluations_reach_the_search_code() -> None:
    """The benchmark does not depend on `apes-cli search`'s code: an edit there re-runs only the Pretrained rows."""
    for name, stage in DVC.items():
        modules = set().union(*(closure(command, command_line(stage, command)) for command in commands(stage)))
        reaches = any((ROOT / "stages" / "footage") in module.parents for module in modules)
        assert reaches == name.startswith("evaluate_pretrained"), name
