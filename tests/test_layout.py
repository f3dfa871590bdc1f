"""The repository's layout rules, checked on the source (numpy only, no Theano).

* C sources live in ``binary_net/csrc/`` and CUDA sources in ``kernels/``, not in
  Python strings, and ``setup.py`` ships them (and every package);
* no module imports another module's private (``_x``) names;
* the library (``binary_net``, ``kernels``) never imports the benchmarks or the
  training scripts.
"""
import ast
import fnmatch
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("binary_net", "kernels")
SCRIPTS = ("mnist", "cifar10", "svhn", "benchmarks")


def python_files(*folders):
    for folder in folders:
        for directory, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def parse(path):
    with open(path, encoding="utf-8") as handle:
        return ast.parse(handle.read(), path)


def setup_keywords():
    """The literal keyword arguments of the ``setup()`` call in setup.py."""
    tree = parse(os.path.join(ROOT, "setup.py"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            return {k.arg: ast.literal_eval(k.value) for k in node.keywords
                    if k.arg in ("packages", "package_data")}
    raise AssertionError("setup.py has no setup() call")


def test_setup_ships_every_package_and_every_c_and_cuda_source():
    keywords = setup_keywords()
    packages = set(keywords["packages"])
    for top in LIBRARY:
        for directory, _, names in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in names:
                package = os.path.relpath(directory, ROOT).replace(os.sep, ".")
                assert package in packages, f"setup.py does not list package {package}"
    sources = [os.path.join("binary_net", "csrc", n)
               for n in os.listdir(os.path.join(ROOT, "binary_net", "csrc"))]
    sources += [os.path.join("kernels", n) for n in os.listdir(os.path.join(ROOT, "kernels"))
                if n.endswith((".cu", ".cuh"))]
    assert any(s.endswith(".h") for s in sources)
    for source in sources:
        package, relative = source.split(os.sep, 1)
        patterns = keywords["package_data"].get(package, [])
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), \
            f"setup.py package_data does not ship {source}"


def string_constants(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_c_or_cuda_code_in_python_strings():
    pattern = re.compile(r"#\s*(include|define|pragma)\b|__global__|\bPyArray_\w+\(|"
                         r"\b(for|while)\s*\(.*;.*;")
    for path in python_files(*LIBRARY):
        for line, text in string_constants(parse(path)):
            if pattern.search(text):
                pytest.fail(f"{os.path.relpath(path, ROOT)}:{line}: C/CUDA code in a "
                            f"Python string ({text.strip().splitlines()[0][:60]!r})")


def test_every_op_body_called_from_python_is_in_a_c_source():
    from binary_net.c_sources import C_SOURCE_DIR, c_source
    headers = "".join(c_source(name) for name in sorted(os.listdir(C_SOURCE_DIR)))
    called = set()
    for path in python_files("binary_net"):
        with open(path, encoding="utf-8") as handle:
            called |= set(re.findall(r"\b(bnn_\w+_op)\(", handle.read()))
    assert {"bnn_xnor_dense_op", "bnn_pixel_dense_op", "bnn_pack_rows_op",
            "bnn_xnor_conv_op", "bnn_sign_pack_nchw_op", "bnn_binary_adam_op"} <= called
    for name in called:
        assert re.search(rf"static int {name}\(", headers), f"{name} is not defined in csrc/"
    with pytest.raises(FileNotFoundError, match=r"missing\.h: C source .* is missing"):
        c_source("missing.h")


def project_module(name, path):
    """True if an import of ``name`` (from the file at ``path``) is a project module."""
    if name.startswith("."):
        return True
    return name.split(".")[0] in LIBRARY + SCRIPTS


def test_no_module_imports_private_names_of_another():
    offenders = []
    files = list(python_files(*LIBRARY, "benchmarks"))
    files += [os.path.join(ROOT, f"{s}.py") for s in SCRIPTS[:3]]
    for path in files:
        tree = parse(path)
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                if not project_module(module, path):
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{path}:{node.lineno}: from {module} import "
                                         f"{alias.name}")
                    aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if project_module(alias.name, path):
                        aliases.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                offenders.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not offenders, "\n".join(os.path.relpath(o, ROOT) for o in offenders)


def test_library_never_imports_benchmarks_or_scripts():
    offenders = []
    for path in python_files(*LIBRARY):
        for node in ast.walk(parse(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{os.path.relpath(path, ROOT)}:{node.lineno}: import {name}"
                          for name in names if name.split(".")[0] in SCRIPTS]
    assert not offenders, "\n".join(offenders)
