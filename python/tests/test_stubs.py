import ast
import os

import metal_compute as mc


def test_stubs_name_what_the_package_has():
    path = os.path.join(os.path.dirname(mc.__file__), "__init__.pyi")
    tree = ast.parse(open(path).read())
    names = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
    names += [t.id for n in tree.body if isinstance(n, ast.AnnAssign) for t in [n.target]]
    missing = [n for n in names if not n.startswith("_") and n not in ("Shape", "Language", "Arg")
               and not hasattr(mc, n) and n not in ("Progress",)]
    assert not missing, missing
    assert len(names) > 40
    for cls in ("Device", "Buffer", "Kernel", "CommandBuffer", "Runner", "Stream"):
        assert getattr(mc, cls).__doc__, f"{cls} has no docstring"
