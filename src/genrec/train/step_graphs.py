"""The whole training step (forward, loss, backward and the optimiser) replayed from one CUDA graph per batch shape:
train.compile = step.

A short step launches hundreds of small kernels, and under train.compile = graphs only the model's forward and
backward replay from graphs: the loss, autograd's walk over the compiled backward and the optimiser still launch from
Python, which keeps the host busy for the whole step and the GPU waiting. Here the first batch of each shape runs
eagerly (it autotunes the Triton kernels and lets the optimiser make its state) and is then captured; later batches
of that shape are copied into the captured inputs and replayed.

What makes a replay the step it stands for:
- the learning rate is read from a device tensor per parameter group, filled from the schedule's value before each
  replay (the optimiser must be capturable);
- random draws advance on every replay as they would eagerly: the default CUDA generator's (dropout) on its own, the
  others (the negatives') because they are registered with each graph;
- all graphs share one memory pool: they run one at a time on one stream, and nothing a graph makes outlives the step
  but its loss, which stays held (the gradients are made inside each graph and read by its optimiser step alone).
On the CPU nothing is captured: every step runs eagerly, the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the tensors each replay reads: a batch is copied into them
    loss: torch.Tensor  # each replay writes the step's loss here
    learning_rates: list[torch.Tensor]  # one per parameter group, filled before each replay


class StepGraphs:
    """Runs `step(*inputs) -> loss` (forward, loss, backward and optimizer.step(); the gradients start as None) on
    host inputs moved to `device`: tensors and dataclasses with .to(device) whose fields are tensors or constants
    (a SequenceBatch). On CUDA each shape's first step is captured and its later ones replay."""

    def __init__(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, device: torch.device,
                 generators: list[torch.Generator]) -> None:
        self.step, self.optimizer, self.device, self.generators = step, optimizer, device, generators
        self.graphs: dict[tuple, _Captured] = {}
        self.pool = None

    def __call__(self, *inputs: Any) -> torch.Tensor:
        tensors, key = _flatten(inputs)
        captured = self.graphs.get(key)
        if captured is None:
            inputs = tuple(value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor)
                           else value.to(self.device) for value in inputs)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.step(*inputs)
            if self.device.type == "cuda":
                self.graphs[key] = self._capture(inputs)
            return loss
        for static, tensor in zip(captured.inputs, tensors):
            static.copy_(tensor, non_blocking=True)
        for rate, group in zip(captured.learning_rates, self.optimizer.param_groups):
            rate.fill_(group["lr"])
        captured.graph.replay()
        return captured.loss

    def _capture(self, inputs: tuple) -> _Captured:
        """The step on `inputs` (the eager step's own device tensors, which become the graph's) recorded, not run."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        groups = self.optimizer.param_groups
        rates = [torch.tensor(float(group["lr"]), device=self.device) for group in groups]
        scheduled = [group["lr"] for group in groups]
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        self.optimizer.zero_grad(set_to_none=True)
        for group, rate in zip(groups, rates):
            group["lr"] = rate
        try:  # thread_local: the batch loader's pinning thread may call CUDA meanwhile
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                loss = self.step(*inputs)
        except RuntimeError as error:  # torch.AcceleratorError is one
            raise RuntimeError("train.compile = step could not capture this training step in a CUDA graph (an "
                               "operation in it waits for the GPU, such as reading a value back); train.compile = "
                               f"graphs captures around such operations: {error}") from error
        finally:
            for group, value in zip(groups, scheduled):
                group["lr"] = value
        return _Captured(graph, _flatten(inputs)[0], loss, rates)


def _flatten(inputs: tuple) -> tuple[list[torch.Tensor], tuple]:
    """The tensors of `inputs` (tensors, and dataclasses whose fields are tensors or constants) in a fixed order,
    and the key of a graph that can replay them: the tensors' shapes and dtypes and every constant."""
    tensors, key = [], []
    for value in inputs:
        parts = [type(value), *(getattr(value, item.name) for item in dataclasses.fields(value))] \
            if dataclasses.is_dataclass(value) else [value]
        for part in parts:
            if isinstance(part, torch.Tensor):
                tensors.append(part)
                key.append((tuple(part.shape), part.dtype))
            else:
                key.append(part)
    return tensors, tuple(key)
