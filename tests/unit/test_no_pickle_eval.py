"""No pickle, no eval on any path that crosses a trust boundary (RELIABILITY "Security").

Every .py of the serving packages and bench (generated stubs in pdserve/v1 included) is parsed
with `ast` and may not:
    import pickle, cPickle, dill, cloudpickle, marshal or shelve (nor `ray.cloudpickle`)
    call eval, exec or compile
    call torch.load without weights_only=True
    call yaml.load without a SafeLoader/CSafeLoader, or yaml.unsafe_load / yaml.full_load
    call numpy.load with allow_pickle=True
Protobuf carries every request, reply and KV locator; KV bytes move as raw buffers (shm,
CUDA IPC, gloo/nccl tensors).

The one allowed channel that pickles is Ray's own control plane inside the cluster network:
the launcher's actor calls (pdserve/launch.py: an actor's construction with its WorkerConfig
and model path; identity, join_kv_group, drain, stop; pdserve/cluster_upkeep.py: identity, to
see which actors exited). No request or KV data crosses it: the last test checks that
`.remote(...)` is called nowhere else.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "router",
    "prefill_worker",
    "decode_worker",
    "kv_transfer",
    "engine",
    "pdserve",
    "bench",
)
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
EVALUATORS = {"eval", "exec", "compile"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}
# The launchers: `pdserve up`'s (launch.py, cluster_upkeep.py) and `pdserve worker`'s.
RAY_CALLERS = {
    Path("pdserve/launch.py"),
    Path("pdserve/cluster_upkeep.py"),
    Path("pdserve/ray_node.py"),
    Path("pdserve/worker_lifecycle.py"),
}


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text(), str(path))


def _dotted(node: ast.expr) -> str:
    """`np.load` → "np.load"; anything not a plain name chain → ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _imported(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {part for alias in node.names for part in alias.name.split(".")}
    if isinstance(node, ast.ImportFrom):
        parts = set((node.module or "").split("."))
        return parts | {alias.name for alias in node.names}
    return set()


def _unsafe_call(call: ast.Call) -> str | None:
    """Why `call` may run code from its input, or None."""
    name = _dotted(call.func)
    if name in EVALUATORS:
        return f"calls {name}"
    if name == "torch.load" and not _is_true(_keyword(call, "weights_only")):
        return "torch.load without weights_only=True"
    if name in ("yaml.unsafe_load", "yaml.full_load"):
        return f"calls {name}"
    if name == "yaml.load":
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or _dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
            return "yaml.load without SafeLoader"
    if name in ("np.load", "numpy.load") and _is_true(_keyword(call, "allow_pickle")):
        return "numpy.load with allow_pickle=True"
    return None


def _calls_remote(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr == "remote"


def _violations(path: Path, tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        picklers = _imported(node) & PICKLERS
        if picklers:
            yield f"{path}:{node.lineno} imports {', '.join(sorted(picklers))}"
        if isinstance(node, ast.Call):
            reason = _unsafe_call(node)
            if reason is not None:
                yield f"{path}:{node.lineno} {reason}"


def test_no_serving_module_unpickles_or_evaluates():
    found = [v for path, tree in _sources() for v in _violations(path, tree)]
    assert not found, "\n".join(found)


def test_the_scan_catches_each_pattern():
    """The scan itself, on one line of each forbidden kind and their safe forms."""
    unsafe = [
        "import pickle",
        "from ray import cloudpickle",
        "import dill.settings",
        "eval(text)",
        "exec(text)",
        "torch.load(f)",
        "torch.load(f, weights_only=False)",
        "yaml.load(s)",
        "yaml.load(s, Loader=yaml.Loader)",
        "yaml.unsafe_load(s)",
        "np.load(f, allow_pickle=True)",
    ]
    safe = ["torch.load(f, weights_only=True)", "yaml.load(s, Loader=yaml.SafeLoader)"]
    safe += ["yaml.safe_load(s)", "np.load(f)", "json.loads(s)", "model.eval()"]
    for line in unsafe:
        assert list(_violations(Path("x.py"), ast.parse(line))), line
    for line in safe:
        assert not list(_violations(Path("x.py"), ast.parse(line))), line


def test_ray_actor_calls_only_in_the_launcher():
    """Ray pickles `.remote(...)` arguments and results: only the launcher's control calls."""
    callers = {
        f"{path}:{node.lineno}"
        for path, tree in _sources()
        if path not in RAY_CALLERS
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _calls_remote(node)
    }
    assert not callers, sorted(callers)
