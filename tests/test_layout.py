"""The package's import rule: the worker side never loads the parent's pool machinery.

A pool worker started as a fresh interpreter (``mp_context="spawn"``) imports only
``ferropool._worker`` and ``ferropool._runtime`` (docs/ARCHITECTURE.md, "Rules"): its start-up
time is the pool's start-up time, and every module it loads is paid again by every worker.
A worker forked from the fork server is a copy of the parent and holds whatever the parent had
imported when the server was made, so only spawned workers are checked.
"""

from __future__ import annotations

from tests.conftest import program_report, run_program

FORBIDDEN_PREFIXES = ("ferropool._pool", "logging", "concurrent.futures", "asyncio")
FORBIDDEN_PUBLIC = ("ferropool.pool", "ferropool.futures", "ferropool.context", "ferropool.process")


def test_a_fresh_worker_loads_neither_the_pool_machinery_nor_logging_futures_or_asyncio(tmp_path):
    (tmp_path / "task_module.py").write_text("import sys\n\ndef loaded(_):\n    return sorted(sys.modules)\n")
    result = run_program(
        tmp_path,
        """
        import ferropool
        from task_module import loaded

        with ferropool.Pool(1, context="spawn") as pool:
            print("\\n".join(pool.apply(loaded, (0,))))
        """,
    )
    assert result.returncode == 0, program_report(result)
    modules = result.stdout.split()
    assert "ferropool._worker.main" in modules, program_report(result)
    offending = [
        name
        for name in modules
        if name in FORBIDDEN_PUBLIC or any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PREFIXES)
    ]
    assert offending == [], f"a spawned worker imported {offending}"


def test_the_worker_side_and_the_runtime_never_import_the_pool_machinery():
    # the static half of the rule, lazy imports included: a module under _worker/ or
    # _runtime/ names nothing under _pool/ and none of the parent's front ends
    import ast
    from pathlib import Path

    import ferropool

    package = Path(ferropool.__file__).parent
    parent_side = ("ferropool._pool", "ferropool.pool", "ferropool.futures", "ferropool.context")
    offending = []
    for folder in ("_worker", "_runtime"):
        for path in sorted((package / folder).glob("*.py")):
            here = f"ferropool.{folder}"
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    base = here.rsplit(".", node.level - 1)[0] if node.level else ""
                    module = ".".join(filter(None, [base, node.module or ""]))
                    names = [f"{module}.{alias.name}" for alias in node.names] + [module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    if any(name == p or name.startswith(p + ".") for p in parent_side):
                        offending.append(f"{path.relative_to(package)}:{node.lineno} imports {name}")
    assert offending == []
