"""K students of one architecture trained as one model (``torch.func``).

:class:`StackedModels` stacks the parameters and buffers of K models along a new first dimension
(``torch.func.stack_module_state``) and runs them with ``vmap(functional_call)``: one forward
pass returns logits ``[K, N, C]``, one backward pass and one optimizer step update all K. For
convolutions vmap becomes a grouped convolution, so K small students keep a GPU busy where one
cannot. The students share every batch (so a live teacher runs once per step for all of them)
and may differ in initialization and in the loss's hyper-parameters (see
:class:`kd.train.distill.Distill`, which takes one α, T per student).

Element-wise optimizers (SGD with momentum and weight decay, Adam) update each slice exactly as
they would the separate model, so K stacked students train as K sequential runs would, up to
floating-point rounding: ``tests/test_batched.py`` checks it for K = 2.

**Members with their own batches.** Given ``input_ndim`` (the dimensions of the batch one member
takes, 4 for images ``[N, C, H, W]``), the stack also takes one batch per member,
``[K, N, ...]``: vmap then maps over the inputs too. That is how K runs that differ in their
seed (initialization, batch order, augmentation) or in their teacher train as one model
(:func:`kd.train.engine.fit` with K seeds): member k sees exactly the batches a run of seed k would.
A stack of K teachers, each its own member's, answers ``[K, N, C]`` the same way.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from kd.errors import ConfigError
from kd.models.core import state_shapes


def batch_norm_input_in_fp32_on_cuda(module: nn.Module, args: tuple) -> tuple | None:
    """Batch norm of a stack takes a bf16/fp16 input on CUDA as float32: there vmap's batch-norm
    backward fails when the input is low precision (autocast leaves batch norm's input as it
    comes) and the running statistics are float32 ("Expected running_mean to have type
    BFloat16", PyTorch issue 184890; seen on an H200 with torch 2.11). CPU runs are unchanged."""
    x = args[0]
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        return (x.float(), *args[1:])
    return None


class StackedModels(nn.Module):
    """K models of one architecture as one module: ``forward(x [N, ...]) -> [K, N, C]``."""

    supports_channels_last = False  # its conv weights are 5-D [K, out, in, h, w]

    def __init__(self, models: Sequence[nn.Module], input_ndim: int | None = None):
        """input_ndim: dimensions of one member's batch; an input with one more is one batch per
        member ``[K, N, ...]`` (None: every input is shared by all K)."""
        super().__init__()
        models = list(models)
        if not models:
            raise ConfigError("StackedModels needs at least one model")
        if any(state_shapes(m) != state_shapes(models[0]) for m in models[1:]):
            raise ConfigError("StackedModels needs models of one architecture (same state_dict "
                              "names and shapes)")
        params, buffers = stack_module_state(models)
        self.param_names, self.buffer_names = list(params), list(buffers)
        self.stacked_params = nn.ParameterList(nn.Parameter(params[n].detach())
                                               for n in self.param_names)
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"stacked_buffer{i}", buffers[name])
        # The skeleton the stacked tensors are plugged into; kept out of the module tree (a
        # list) so it owns no parameters, and on the meta device so it holds no memory.
        self._skeleton = [copy.deepcopy(models[0]).to("meta")]
        for module in self._skeleton[0].modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(batch_norm_input_in_fp32_on_cuda)
        self.size, self.input_ndim = len(models), input_ndim

    def __len__(self) -> int:
        return self.size

    def _stacked(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params = dict(zip(self.param_names, self.stacked_params))
        buffers = {n: getattr(self, f"stacked_buffer{i}") for i, n in enumerate(self.buffer_names)}
        return params, buffers

    def train(self, mode: bool = True) -> "StackedModels":
        self._skeleton[0].train(mode)  # batch norm and dropout read the skeleton's mode
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        skeleton = self._skeleton[0]

        def one_model(params, buffers, inputs):
            return functional_call(skeleton, (params, buffers), (inputs,))

        per_member = self.input_ndim is not None and x.dim() == self.input_ndim + 1
        if per_member and x.shape[0] != self.size:
            raise ConfigError(f"a stack of {self.size} models got batches for {x.shape[0]}")
        # randomness="different": each student draws its own dropout masks
        return vmap(one_model, in_dims=(0, 0, 0 if per_member else None),
                    randomness="different")(*self._stacked(), x)

    def state_dicts(self) -> list[dict[str, Tensor]]:
        """The K models' own state dicts (copies, so each saves alone)."""
        return self.split_state(self.state_dict())

    def split_state(self, state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """A state dict of this stack (its own, or a checkpoint of it) as the K models' own."""
        names = {f"stacked_params.{i}": n for i, n in enumerate(self.param_names)}
        names.update({f"stacked_buffer{i}": n for i, n in enumerate(self.buffer_names)})
        return [{names[key]: t[k].detach().clone() for key, t in state.items()}
                for k in range(self.size)]

    def unstack(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        """Copy the K trained slices back into K models of the architecture; returns them."""
        if len(models) != self.size:
            raise ConfigError(f"unstack needs {self.size} models, got {len(models)}")
        for model, state in zip(models, self.state_dicts()):
            model.load_state_dict(state)
        return list(models)


class LoopedModels(nn.ModuleList):
    """K models (of one architecture or not) run one after another on each batch, their logits
    stacked ``[K, N, C]``: the same interface as :class:`StackedModels` for objectives over K
    students (mutual learning), without vmap. On a CPU this is the faster of the two (vmap's
    grouped convolutions run slowly there); each model keeps its own ``channels_last`` layout."""

    def __init__(self, models: Sequence[nn.Module], input_ndim: int | None = None):
        """input_ndim: as for :class:`StackedModels`; one batch per member ``[K, N, ...]``
        then goes to model k alone (K teachers of different architectures, each its own
        student's)."""
        if not models:
            raise ConfigError("LoopedModels needs at least one model")
        super().__init__(models)
        self.input_ndim = input_ndim

    def forward(self, x: Tensor) -> Tensor:
        if self.input_ndim is not None and x.dim() == self.input_ndim + 1:
            if x.shape[0] != len(self):
                raise ConfigError(f"{len(self)} looped models got batches for {x.shape[0]}")
            return torch.stack([model(inputs) for model, inputs in zip(self, x)])
        return torch.stack([model(x) for model in self])

    def unstack(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        """Copy the K trained models' weights into ``models``; returns them."""
        if len(models) != len(self):
            raise ConfigError(f"unstack needs {len(self)} models, got {len(models)}")
        for model, trained in zip(models, self):
            model.load_state_dict(trained.state_dict())
        return list(models)


class GroupedModels(nn.Module):
    """K models of one or several architectures, logits ``[K, N, C]`` in member order: the
    members of an architecture run as one :class:`StackedModels` when there are at least
    ``stack_at_least`` of them, the others one after another. For K teachers each of its own
    student's, when the students stack but their teachers differ in architecture (a vmapped
    forward costs about four models' operators, so a stack of fewer does not pay on a GPU)."""

    supports_channels_last = False  # stacked parts hold 5-D weights; the others keep their own

    def __init__(self, models: Sequence[nn.Module], input_ndim: int | None = None,
                 stack_at_least: int = 5):
        super().__init__()
        models = list(models)
        if not models:
            raise ConfigError("GroupedModels needs at least one model")
        by_architecture: dict[tuple, list[int]] = {}
        for i, model in enumerate(models):
            by_architecture.setdefault(tuple(state_shapes(model).items()), []).append(i)
        groups: list[list[int]] = []
        for members in by_architecture.values():
            if len(members) >= stack_at_least:
                groups.append(members)
            else:
                groups.extend([i] for i in members)
        self.parts = nn.ModuleList(
            StackedModels([models[i] for i in g], input_ndim) if len(g) > 1
            else LoopedModels([models[g[0]]], input_ndim) for g in groups)
        self.input_ndim, self.size = input_ndim, len(models)
        order = [i for g in groups for i in g]
        self.register_buffer("member_of_part", torch.tensor(order), persistent=False)
        self.register_buffer("part_of_member", torch.argsort(self.member_of_part),
                             persistent=False)
        self.groups = groups

    def __len__(self) -> int:
        return self.size

    def forward(self, x: Tensor) -> Tensor:
        per_member = self.input_ndim is not None and x.dim() == self.input_ndim + 1
        if per_member and x.shape[0] != self.size:
            raise ConfigError(f"{self.size} grouped models got batches for {x.shape[0]}")
        if per_member:
            x = x.index_select(0, self.member_of_part)  # the parts' members, in their order
        outputs, start = [], 0
        for part, group in zip(self.parts, self.groups):
            outputs.append(part(x[start:start + len(group)] if per_member else x))
            start += len(group)
        return torch.cat(outputs).index_select(0, self.part_of_member)


__all__ = ["StackedModels", "LoopedModels", "GroupedModels"]
