"""The layers hold in the source: only dapp/chain talks to web3, hardware/ imports no dapp, and
the sentences people read are written in dapp/services/messages.py only.

Each rule is checked on the parsed source (`ast`) of every module under dapp/ and hardware/, so
a call that reaches through the chain layer (`client.w3.eth...`) fails here even though it
imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dapp.web.hosts  # noqa: F401 - defines CreationRefused, a UserError
from dapp.agents.policy import InvalidLimits
from dapp.services.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CHAIN = "dapp/chain/"
# Modules only the chain layer may import.
NODE_LIBRARIES = ("web3", "eth_tester")
# Attributes that mean "talking to web3 directly": the Web3 object, its eth module, its
# provider's raw requests, a contract's functions.
NODE_ATTRIBUTES = ("w3", "_w3", "eth", "functions", "make_request", "provider")
# No device-side module imports dapp (the bridge is application code, in dapp/bridge).
HARDWARE_MAY_IMPORT_DAPP: set[str] = set()
MESSAGES = "dapp/services/messages.py"


def _subclasses(cls: type) -> set[str]:
    """The names of every subclass of `cls`, at any depth."""
    return {name for sub in cls.__subclasses__() for name in {sub.__name__, *_subclasses(sub)}}


# Errors whose message a person reads (a page, the JSON API's "error").
USER_ERRORS = _subclasses(UserError) | {"UserError", InvalidLimits.__name__}


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in `tree`, relative imports left out."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def violations(source: str, path: str) -> list[str]:
    """What in `source` (the module at repository path `path`) breaks a layering rule."""
    tree = ast.parse(source, filename=path)
    problems = []
    imports = _imported(tree)
    if not path.startswith(CHAIN):
        problems += [f"{path}:{line}: imports {module}" for line, module in imports
                     if _top(module) in NODE_LIBRARIES]
        problems += [f"{path}:{node.lineno}: uses .{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and node.attr in NODE_ATTRIBUTES]
    if path.startswith("dapp/") and path != MESSAGES:
        problems += [f"{path}:{node.lineno}: writes a sentence outside messages"
                     for node in ast.walk(tree) if _raises_a_written_sentence(node)]
    if path.startswith("hardware/") and path not in HARDWARE_MAY_IMPORT_DAPP:
        problems += [f"{path}:{line}: imports {module}" for line, module in imports
                     if _top(module) == "dapp"]
    return problems


def _raises_a_written_sentence(node: ast.AST) -> bool:
    """`raise InvalidInput("...")` or with an f-string: a sentence that belongs in messages."""
    if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
        return False
    call = node.exc
    name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
    given = [*call.args[:1], *(k.value for k in call.keywords if k.arg == "message")]
    return name in USER_ERRORS and any(_written(arg) for arg in given)


def _written(node: ast.AST) -> bool:
    """Text made here: a literal, an f-string, `"..." % x`, `"..." + x`, `"...".format(x)`."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return _written(node.left) or _written(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "format" and _written(node.func.value)
    return False


def _modules() -> list[Path]:
    return sorted(p for top in ("dapp", "hardware") for p in (ROOT / top).rglob("*.py"))


def test_the_source_tree_keeps_its_layers():
    modules = _modules()
    assert len(modules) > 30  # the walk found the tree
    problems = []
    for path in modules:
        relative = path.relative_to(ROOT).as_posix()
        problems += violations(path.read_text(encoding="utf-8"), relative)
    assert problems == []


@pytest.mark.parametrize(
    ("source", "path", "problem"),
    [
        ("from web3 import Web3\n", "dapp/services/x.py", "imports web3"),
        ("import eth_tester.backends\n", "dapp/web/x.py", "imports eth_tester.backends"),
        ("t = client.w3.eth.get_block(1)\n", "dapp/services/x.py", "uses .w3"),
        ("p = client.gas().eth\n", "dapp/x.py", "uses .eth"),
        ("n = client._registry.functions.x().call()\n", "dapp/x.py", "uses .functions"),
        ("r = w.provider.make_request('anvil_setBalance', [])\n", "dapp/x.py",
         "uses .make_request"),
        ("node.provider.cache_allowed_requests = True\n", "dapp/simulate/x.py",
         "uses .provider"),
        ("from dapp.errors import MeterError\n", "hardware/driver.py", "imports dapp.errors"),
        ("import dapp\n", "hardware/x.py", "imports dapp"),
        ("raise InvalidInput('Enter a number.')\n", "dapp/services/x.py",
         "writes a sentence outside messages"),
        ("raise errors.ActionRefused(f'No {x}.')\n", "dapp/web/x.py",
         "writes a sentence outside messages"),
        ("raise InvalidInput('No %s.' % x)\n", "dapp/x.py", "writes a sentence outside messages"),
        ("raise InvalidInput('No ' + x)\n", "dapp/x.py", "writes a sentence outside messages"),
        ("raise ChainDown('No {}.'.format(x))\n", "dapp/x.py",
         "writes a sentence outside messages"),
        ("raise InvalidInput(message='Enter a number.')\n", "dapp/x.py",
         "writes a sentence outside messages"),
        ("raise InvalidLimits(f'The {what} is negative.', name)\n", "dapp/agents/x.py",
         "writes a sentence outside messages"),
    ],
)
def test_each_rule_catches_what_it_forbids(source, path, problem):
    assert problem in [p.split(": ", 1)[1] for p in violations(source, path)]


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("from web3 import Web3\nw3 = Web3()\nw3.eth.block_number\n", "dapp/chain/x.py"),
        ("from dapp.chain.client import ChainClient\n", "dapp/bridge/x.py"),
        ("from hardware.protocol import KINDS\n", "dapp/services/x.py"),
        ("name = event.contract\n", "dapp/web/x.py"),
        ("raise InvalidInput(messages.enter(what))\n", "dapp/services/x.py"),
        ("raise InvalidInput('Enter a number.')\n", MESSAGES),
        ("raise ValueError('not a key')\n", "dapp/x.py"),
        ("raise InvalidInput(messages.enter('the ' + what))\n", "dapp/x.py"),
        ("raise InvalidLimits(messages.agent_not_whole_wei(what), name)\n", "dapp/agents/x.py"),
    ],
)
def test_what_the_layers_allow_passes(source, path):
    assert violations(source, path) == []
