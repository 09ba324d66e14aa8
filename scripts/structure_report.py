"""The code's shape, as issue 27 measures it: import circles, modules over 400 lines, lines per side.

Every import counts, also one inside a function: a lazy import that closes a circle still makes two
modules that cannot be read (or tested) one without the other. ``from . import x`` counts as an
import of the module ``x`` when ``x`` is one.

Usage: python scripts/structure_report.py [--max-lines 400] [--strict]
Prints name=value lines, then the circles and the long modules; --strict exits 1 when any is found.
"""
import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Not the plugin's code: its tests, scripts, the virtualenv and build outputs.
SKIP = {"tests", "scripts", ".venv", "docs", "resources", "bench_output", "demo_output", "dist", "build"}
ENGINE = "core"


def modules(root=ROOT):
    """{dotted name: path} of every module of the plugin (the plugin folder is the package root '')."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _package_of(name, path):
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(name, path, known):
    """The plugin modules ``name`` imports (relative imports, and absolute ones of ``core``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _package_of(name, path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == ENGINE and package.split(".")[0] == ENGINE:
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ENGINE and package.split(".")[0] == ENGINE:
                    found.add(alias.name)
    # A package's own __init__ is not an edge worth reporting; neither is the module itself.
    return {t for t in found if t in known and t != name and t != ""}


def circles(graph):
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        result.append(sorted(component))
    return sorted(result)


def report(max_lines=400, root=ROOT):
    known = modules(root)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in known.items()}
    long = sorted((n for n in lines if lines[n] > max_lines), key=lambda n: -lines[n])
    engine = sum(v for n, v in lines.items() if n.split(".")[0] == ENGINE)
    return {"circles": circles(graph), "long": [(n, lines[n]) for n in long], "engine_lines": engine,
            "qgis_side_lines": sum(lines.values()) - engine, "modules": len(known)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lines", type=int, default=400)
    parser.add_argument("--strict", action="store_true", help="exit 1 on any circle or long module")
    args = parser.parse_args(argv)
    r = report(args.max_lines)
    print(f"modules={r['modules']}")
    print(f"import_circles={len(r['circles'])}")
    print(f"modules_over_{args.max_lines}_lines={len(r['long'])}")
    print(f"engine_lines={r['engine_lines']}")
    print(f"qgis_side_lines={r['qgis_side_lines']}")
    for circle in r["circles"]:
        print("circle: " + " <-> ".join(circle))
    for name, count in r["long"]:
        print(f"long: {name} {count}")
    return 1 if args.strict and (r["circles"] or r["long"]) else 0


if __name__ == "__main__":
    sys.exit(main())
