"""The classifier's model, optimiser, schedule and training step: eager (autocast, fp16 loss scaling), or
the whole step captured once as a CUDA graph and replayed per batch (`--cuda-graphs`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lumbar_fast import rsna
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.models.classifier import create_classifier


# -- model, optimiser, schedule ------------------------------------------------
def build_model(config: TrainConfig, channels: int, device: torch.device) -> nn.Module:
    """The classifier (3 classes) for crops of `channels` slices on `device`, in channels_last memory format:
    the timm model, or the multi-slice model around it (models/classifier.py; `config.pooling` resolved).

    On CUDA, cuDNN autotuning picks the fastest kernels: every training batch has the same shape."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = create_classifier(config.model, channels, config.pooling,
                              config.window_stride, config.window_padding, num_classes=len(rsna.SEVERITIES),
                              pretrained=config.pretrained, weights=config.weights)
    return model.to(device=device, memory_format=torch.channels_last)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam; for CUDA-graph capture its state and learning rate live on the GPU (capturable, tensor lr)."""
    if config.cuda_graphs:
        lr = torch.tensor(config.lr, device=device)
        return torch.optim.Adam(model.parameters(), lr=lr, capturable=True)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.StepLR:
    """The seed's StepLR, stepped once per epoch."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)


class EagerStep:
    """Forward, loss, backward and Adam step under autocast; fp16 with a gradient scaler."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 amp_dtype: torch.dtype | None, device: torch.device, scaler: torch.amp.GradScaler) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.amp_dtype, self.device, self.scaler = amp_dtype, device, scaler

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the detached mean loss and the number of correct predictions."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = self.model(images)
        loss = self.criterion(logits.float(), labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), (logits.argmax(1) == labels).sum()


class GraphStep:
    """The whole step (forward, loss, backward, Adam) captured once as a CUDA graph and replayed per batch.

    Static shapes: every training batch has the same size (the loaders drop the last partial one). Warm-up
    iterations run on a side stream before capture; model and optimiser state are restored afterwards, so
    the warm-up leaves no trace and the run equals an eager one up to floating-point order.
    """

    warmup_steps = 3

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 amp_dtype: torch.dtype | None, device: torch.device) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.amp_dtype, self.device = amp_dtype, device
        self.graph: torch.cuda.CUDAGraph | None = None

    def _forward_backward(self) -> None:
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            self.logits = self.model(self.images)
        self.loss = self.criterion(self.logits.float(), self.labels)
        self.loss.backward()
        self.optimizer.step()
        self.correct = (self.logits.argmax(1) == self.labels).sum()

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.clone(), labels.clone()
        saved = snapshot_training_state(self.model, self.optimizer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        del self.logits, self.loss, self.correct  # free the warm-up's autograd graph before capture
        restore_training_state(self.model, self.optimizer, saved)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._forward_backward()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the batch into the graph's static inputs and replay; returns loss and correct count."""
        if self.graph is None:
            self._capture(images, labels)
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        return self.loss.detach().clone(), self.correct.clone()


def snapshot_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of the model's parameters and buffers and of Adam's state tensors (taken before warm-up)."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}}


def restore_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Undo the warm-up in place (the graph needs the same tensors): copy back what was there, and zero
    the Adam state that the warm-up created (zero moments and step are a fresh Adam's state)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(saved["model"][key])
        for param, state in optimizer.state.items():
            before = saved["optimizer"].get(param)
            for key, value in state.items():
                value.copy_(before[key]) if before is not None else value.zero_()


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
              amp_dtype: torch.dtype | None, device: torch.device,
              cuda_graphs: bool, scaler: torch.amp.GradScaler) -> EagerStep | GraphStep:
    """The training step the configuration asks for (a captured one never scales: see check_cuda_graphs)."""
    if cuda_graphs:
        return GraphStep(model, optimizer, criterion, amp_dtype, device)
    return EagerStep(model, optimizer, criterion, amp_dtype, device, scaler)


def check_cuda_graphs(device: torch.device, amp_dtype: torch.dtype | None, world_size: int,
                      pooling: str) -> None:
    """Refuse --cuda-graphs where the captured step cannot run as asked, given the resolved autocast dtype
    and pooling: without CUDA, across processes, in fp16 (`--amp auto` on a GPU without bf16: T4, V100,
    P100), which needs loss scaling that syncs the host and would otherwise train unscaled, or with the GRU
    pooling, whose cuDNN kernels were never checked under capture."""
    if pooling == "gru":
        raise LumbarFastError("--cuda-graphs is not checked with --pooling gru (cuDNN's GRU under capture); "
                              "use --pooling attention or drop --cuda-graphs")
    if device.type != "cuda":
        raise LumbarFastError("--cuda-graphs needs a CUDA device")
    if world_size > 1:
        raise LumbarFastError("--cuda-graphs runs in a single process only; drop it to train with torchrun")
    if amp_dtype == torch.float16:
        raise LumbarFastError("--cuda-graphs cannot train fp16 (loss scaling syncs the host): use --amp bf16 "
                              "on a GPU with bf16, --amp none, or drop --cuda-graphs")
