"""The package's shape, checked from its source: no import cycle, the decoder knows no front end, no
command imports another command's modules, and nothing outside ``models/`` decides by a family's name.

Every import counts: module-level, function-level and ``TYPE_CHECKING`` ones alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "dlm_cli"

# The commands' own modules: none may import another's (they share session, profiles, decode, evals, ...).
COMMANDS = {
    "generate": ("dlm_cli.generate",),
    "bench": ("dlm_cli.bench",),
    "serve": ("dlm_cli.serve",),
    "filter": ("dlm_cli.filter",),
    "distill": ("dlm_cli.train",),
    "lm-eval": ("dlm_cli.evals.lmeval",),
    "catalog": ("dlm_cli.catalog",),
}
# What the decoder may never import: it yields events and knows no terminal, command or profile file.
FRONT_ENDS = ("dlm_cli.cli", "dlm_cli.view", "dlm_cli.profiles", "dlm_cli.session", "dlm_cli.generate",
              "dlm_cli.bench", "dlm_cli.serve", "dlm_cli.train", "dlm_cli.evals", "dlm_cli.filter",
              "dlm_cli.catalog", "dlm_cli.prompting")


def modules() -> dict[str, tuple[Path, list[str]]]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        else:
            package = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


MODULES = modules()


def imports() -> dict[str, set[str]]:
    """Module -> the dlm_cli modules it imports (``from . import x`` of a submodule counts as that submodule)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, (path, package) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
                found = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name].update(f for f in found if f in MODULES and f != name)
    return graph


GRAPH = imports()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_scan_sees_the_package():
    assert "dlm_cli.decode.loops.blocks" in MODULES and "dlm_cli.session" in MODULES
    assert "dlm_cli.decode.keys" in GRAPH["dlm_cli.decode.loops.blocks"]
    assert "dlm_cli.session" in GRAPH["dlm_cli.generate"]


def test_cycles_are_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if under(m, ("dlm_cli.decode",))))
def test_the_decoder_imports_no_front_end(module):
    bad = sorted(t for t in GRAPH[module] if under(t, FRONT_ENDS))
    assert not bad, f"{module} imports {bad}: the decoder yields events and knows no front end"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_imports_another_commands_modules(command):
    mine = COMMANDS[command]
    others = tuple(p for c, ps in COMMANDS.items() if c != command for p in ps)
    for module in (m for m in MODULES if under(m, mine)):
        bad = sorted(t for t in GRAPH[module] if under(t, others) and not under(t, mine))
        assert not bad, f"{module} (dlm {command}) imports {bad}: shared code belongs in session, evals or below"


def test_prompting_knows_no_model():
    """Where the prompt comes from and how it is encoded: text and a tokenizer, never a model object."""
    bad = sorted(t for t in GRAPH["dlm_cli.prompting"] if under(t, ("dlm_cli.models", "dlm_cli.decode")))
    assert not bad, f"dlm_cli.prompting imports {bad}"


def family_decisions(path: Path) -> list[int]:
    """Lines that compare something's ``family`` (``x.family == ...``, ``x.family in ...``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "family" for s in sides):
                out.append(node.lineno)
    return out


def test_family_decisions_are_detected(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("if model.info.family in ('llada', 'dream'):\n    pass\nok = model.kind == 'diffusion'\n")
    assert family_decisions(f) == [1]


def test_nothing_outside_models_decides_by_family_name():
    found = {name: family_decisions(path) for name, (path, _) in MODULES.items()
             if not under(name, ("dlm_cli.models",))}
    assert {k: v for k, v in found.items() if v} == {}, "decide by model.capabilities (dlm_cli/capabilities.py)"


def name_decisions(path: Path) -> list[int]:
    """Lines that compare something with an embedded model's name (help text may name one; code may not)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                for const in ast.walk(side):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str) and \
                            ("dlm-demo" in const.value or "smollm2" in const.value):
                        out.append(node.lineno)
    return out


def test_prompting_and_the_decoder_decide_by_no_model_name():
    assert "dlm-demo" not in (ROOT / "prompting.py").read_text(encoding="utf-8")
    found = {name: name_decisions(path) for name, (path, _) in MODULES.items()
             if under(name, ("dlm_cli.prompting", "dlm_cli.decode", "dlm_cli.session", "dlm_cli.bench"))}
    assert {k: v for k, v in found.items() if v} == {}


def test_contributings_new_rule_is_a_declaration_a_rule_and_a_profile():
    """CONTRIBUTING.md's example rule, run as written: registered by its declaration, loaded from its
    profile, decoded by the block loop with the rule its declaration names, listed with its key."""
    import sys
    import types

    from dlm_cli import profiles
    from dlm_cli.decode import STRATEGIES, run
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    text = (ROOT.parent / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## Add a commit rule", 1)[1]
    declaration, rule = (block.split("```", 1)[0] for block in section.split("```python\n")[1:3])
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    assert "import torch" not in declaration
    names = ("dlm_cli.decode.declared.margin", "dlm_cli.decode.rules.margin")
    try:
        for name, source in zip(names, (declaration, rule)):
            module = types.ModuleType(name)
            module.__package__ = name.rsplit(".", 1)[0]
            sys.modules[name] = module  # what an import of the file would do: the declaration's impl finds it
            exec(compile(source, name.rsplit(".", 1)[1] + ".py", "exec"), module.__dict__)
        import tomllib

        settings = profiles.build(tomllib.loads(toml), "margin.toml", profile="margin",
                                  flags={"seed": 0, "max_new_tokens": 16})
        assert settings.strategy == "margin" and settings.margin_bound == 0.5
        assert STRATEGIES["margin"].factory is sys.modules[names[1]].Margin
        model = load("dlm-demo")
        done = list(run(model, encode(model.tokenizer, "Sort these numbers: 4 7 1 9 3"), settings))[-1]
        assert model.tokenizer.decode(done.tokens, skip_special_tokens=True) == "1 3 4 7 9"
        assert done.nfe < len(done.tokens)  # several tokens per forward where the margin is wide
    finally:
        STRATEGIES.pop("margin", None)
        for name in names:
            sys.modules.pop(name, None)
