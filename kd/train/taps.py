"""Feature taps: a model's forward pass traced by ``torch.fx`` into a graph that returns the
logits and the output of each tapped module (module paths, as in ``model.get_submodule``),
calling the model's own modules, so no model is edited and one forward pass gives both.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, fx, nn

from kd.errors import ConfigError


def submodule(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``, with a ConfigError that lists some of the known paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        shown = ", ".join(names[:25]) + (", ..." if len(names) > 25 else "")
        raise ConfigError(f"no module {path!r} in {type(model).__name__}; its module paths: "
                          f"{shown}") from None


class _TapTracer(fx.Tracer):
    """torch.fx's tracer, with each tapped module kept as one call (a leaf of the graph)."""

    def __init__(self, paths: Sequence[str]):
        super().__init__()
        self.paths = set(paths)

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return qualname in self.paths or super().is_leaf_module(module, qualname)


def trace_taps(model: nn.Module, paths: Sequence[str], who: str) -> fx.GraphModule:
    """``model``'s forward pass as a graph module returning ``(output, [feature per path])``.

    A tapped module stays one call in the graph, so its feature is exactly what it returned
    (its last call when called more than once); everything else is traced through. The graph
    calls the model's own modules (same parameters, buffers and train/eval mode); Python
    branches on ``self.training`` outside them are fixed as traced.
    """
    try:
        graph = _TapTracer(paths).trace(model)
    except Exception as error:  # data-dependent Python control flow, untraceable calls
        raise ConfigError(f"the {who} ({type(model).__name__}) cannot be traced by torch.fx, "
                          f"which reads its taps: {error}") from error
    calls = {node.target: node for node in graph.nodes if node.op == "call_module"}  # last
    missing = [p for p in paths if p not in calls]
    if missing:
        raise ConfigError(f"the {who}'s taps {missing} produced no output in its forward pass "
                          f"(never called, or inside another tapped module)")
    output = next(node for node in graph.nodes if node.op == "output")
    output.args = ((output.args[0], [calls[p] for p in paths]),)
    return fx.GraphModule(model, graph, class_name=f"{type(model).__name__}WithTaps")


class TappedForward:
    """``model(x)`` and its tapped features from one pass: ``tapped(x) -> (logits, features)``.

    Runs :func:`trace_taps`'s graph, traced on first use in each mode (train/eval). With a
    ``compiler`` (the ``dynamo_ctx`` of a ``torch.compile`` wrapper) the graph runs compiled
    with those settings. Each graph has its own generated code, so its compilation is its own:
    never a graph compiled earlier for another model of the class, and no recompilations pile
    up on the class's one forward function (dynamo stops compiling a function after 8).
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], who: str):
        for path in paths:
            submodule(model, path)  # an unknown path: a ConfigError listing the known ones
        self.model, self.paths, self.who = model, list(paths), who
        self._graphs: dict[bool, fx.GraphModule] = {}
        self._compiled: dict[bool, tuple[Callable, nn.Module]] = {}  # mode -> (compiler, graph)

    def graph(self) -> fx.GraphModule:
        mode = self.model.training
        if mode not in self._graphs:
            self._graphs[mode] = trace_taps(self.model, self.paths, self.who)
        return self._graphs[mode]

    def compiled(self, compiler: Callable) -> nn.Module:
        """:meth:`graph` compiled by ``compiler``, once per compiler and mode."""
        mode = self.model.training
        if self._compiled.get(mode, (None,))[0] is not compiler:
            self._compiled[mode] = (compiler, compiler(self.graph()))
        return self._compiled[mode][1]

    def __call__(self, x: Tensor, compiler: Callable | None = None) -> tuple[Tensor, list[Tensor]]:
        return (self.graph() if compiler is None else self.compiled(compiler))(x)


__all__ = ["TappedForward", "submodule", "trace_taps"]
