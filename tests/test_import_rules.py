"""The layers' import rules, read from the source (every import statement, function-level ones too).

* ``pipelines`` and ``storage`` (production packages) never import ``research`` or ``dicom_node``;
* ``pipelines`` never imports ``storage``, nor anything for networking or SQL (``NETWORK_OR_SQL``),
  and never reads the environment (``os.environ``, ``os.getenv``): its callers pass what it needs;
* ``research`` never imports ``dicom_node`` or ``storage``;
* ``dicom_node`` may import all three.

``importlib.import_module("name")`` and ``__import__("name")`` with a literal name count as imports.
The checker is tried first on small synthetic modules, so that a rule it could not see broken
shows as a failure here rather than as a silent pass below.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.paths import REPO

PACKAGES = ("pipelines", "storage", "research", "dicom_node")
NETWORK_OR_SQL = ("sqlalchemy", "alembic", "psycopg", "psycopg2", "pynetdicom", "requests", "urllib3", "httpx",
                  "socket", "distributed")
FORBIDDEN = {
    "pipelines": ("research", "dicom_node", "storage", *NETWORK_OR_SQL),
    "storage": ("research", "dicom_node"),
    "research": ("dicom_node", "storage"),
    "dicom_node": (),
}
ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def module_name(path: Path) -> str:
    """``pipelines/model/bundles.py`` -> ``pipelines.model.bundles``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value))
    return found


def environment_reads(source: str) -> list[int]:
    """Lines that read or change the process environment through ``os`` (any alias of it)."""
    tree = ast.parse(source)
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name == "os"}
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in ENVIRONMENT for a in node.names):
            lines.append(node.lineno)
    return sorted(set(lines))


def violations(package: str, where: str, source: str, module: str, is_package: bool = False) -> list[str]:
    """``where:line imports name`` for each import of ``source`` that ``package``'s rules forbid."""
    out = []
    for line, name in imported_modules(source, module, is_package):
        for banned in FORBIDDEN[package]:
            if name == banned or name.startswith(banned + "."):
                out.append(f"{where}:{line} imports {name}")
                break
    return sorted(set(out))


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


# --- the checker itself, on synthetic modules --------------------------------------------------------------

BROKEN = {
    "pipelines imports research": ("pipelines", "import research.training\n", "research.training"),
    "pipelines imports dicom_node in a function": ("pipelines", "def f():\n    from dicom_node.cli import main\n",
                                                   "dicom_node.cli"),
    "pipelines imports storage": ("pipelines", "from storage.models import Job\n", "storage.models"),
    "pipelines imports sqlalchemy": ("pipelines", "from sqlalchemy.orm import Session\n", "sqlalchemy.orm"),
    "pipelines imports socket": ("pipelines", "import socket\n", "socket"),
    "pipelines imports pynetdicom by name": ("pipelines", "import importlib\nimportlib.import_module('pynetdicom')\n",
                                            "pynetdicom"),
    "pipelines imports requests as": ("pipelines", "import requests as http\n", "requests"),
    "pipelines imports distributed": ("pipelines", "from distributed import Client\n", "distributed"),
    "storage imports research": ("storage", "from research import evaluation\n", "research"),
    "storage imports dicom_node": ("storage", "import dicom_node.runtime.node\n", "dicom_node.runtime.node"),
    "research imports storage": ("research", "def g():\n    import storage\n", "storage"),
    "research imports dicom_node": ("research", "from dicom_node.config import settings\n", "dicom_node.config"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_checker_reports_an_import_that_breaks_a_rule(case):
    package, source, name = BROKEN[case]
    found = violations(package, "synthetic.py", source, f"{package}.synthetic")
    assert found and all(f" imports {name}" in v for v in found), found


@pytest.mark.parametrize("package, source", [
    ("dicom_node", "import pipelines.process, storage, research.evaluation\nimport socket, sqlalchemy\n"),
    ("research", "from pipelines.levels import LEVELS\nimport socket\n"),
    ("storage", "from pipelines.records import CTSeries\nimport sqlalchemy\n"),
    ("pipelines", "from .levels import LEVELS\nfrom pipelines.model import bundles\nimport numpy\n"),
])
def test_the_checker_lets_an_allowed_import_pass(package, source):
    assert violations(package, "synthetic.py", source, f"{package}.model.synthetic") == []


def test_relative_imports_are_resolved_against_the_module_package():
    assert imported_modules("from ..series import loader\n", "pipelines.model.segmenter") == [
        (1, "pipelines.series"), (1, "pipelines.series.loader")]
    assert imported_modules("from . import codes\n", "pipelines.outputs", is_package=True) == [
        (1, "pipelines.outputs"), (1, "pipelines.outputs.codes")]


@pytest.mark.parametrize("source", [
    "import os\nroot = os.environ.get('SPINE_NODE_MODELS_DIR')\n",
    "import os\nroot = os.getenv('SPINE_NODE_MODELS_DIR')\n",
    "import os as _os\nroot = _os.environ['X']\n",
    "from os import environ\n",
    "def f():\n    import os\n    return os.environ\n",
])
def test_the_checker_reports_a_read_of_the_environment(source):
    assert environment_reads(source)


def test_the_checker_lets_other_uses_of_os_pass():
    assert environment_reads("import os\nos.path.join('a', 'b')\nos.fspath('x')\nenviron = {}\n") == []


# --- the rules, on the packages ----------------------------------------------------------------------------

@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_layer_may(package):
    assert sources(package), f"no module found under {package}/"
    found = []
    for path in sources(package):
        found += violations(package, str(path.relative_to(REPO)), path.read_text(), module_name(path),
                            path.name == "__init__.py")
    assert found == [], "\n".join(found)


def test_pipelines_never_reads_the_environment():
    found = [f"{path.relative_to(REPO)}:{line}" for path in sources("pipelines")
             for line in environment_reads(path.read_text())]
    assert found == [], "pipelines reads the environment at " + ", ".join(found)
