"""A loss oracle whose static check is switched off: the test stand-in for "the AST check was fooled".

Only the hostile tests start it, to show that the layers below the static check stop a hostile
candidate on their own and that, whatever its code does in the oracle, it cannot change another
verdict. Everything else is the production oracle.
"""

import ast

import discopop.contract.losses as losses


def _fooled_static_check(source: str) -> losses.StaticInfo:
    tree = ast.parse(source)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    return losses.StaticInfo(function_name=names[0], uses_beta=True)


losses.static_check = _fooled_static_check

if __name__ == "__main__":
    from discopop.sandbox.oracle import main

    main()
