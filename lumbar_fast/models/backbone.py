"""Classifier creation on timm: any model by name, ImageNet-pretrained from the hub or from a local file.

Offline machines cannot download weights: an unreachable hub is a one-line error naming `--weights FILE`
and `--no-pretrained`, never a traceback. timm (with torchvision behind it) and the hub client load when a
model is first built, not with this module: they are 3 of the 5 s a training process takes to import its
stack, which a run that stops at a bad input, or a rank that only learns another rank's error, never needs.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lumbar_fast.errors import LumbarFastError, first_line

DEFAULT_MODEL = "tf_efficientnetv2_s"


def create_model(name: str = DEFAULT_MODEL, num_classes: int = 3, in_chans: int = 3, pretrained: bool = True,
                 weights: str | Path | None = None, **timm_options: Any) -> torch.nn.Module:
    """A timm classifier with `num_classes` outputs and `in_chans` input channels.

    Weights: a local `weights` file when given (its classifier head may differ and is then left fresh),
    else the hub's pretrained weights when `pretrained`, else random initialisation. `timm_options` go to
    timm.create_model as they are (e.g. `features_only=True` for the locator's backbone).
    """
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not timm.is_model(name):
        raise LumbarFastError(f"unknown model {name!r}; timm.list_models('*pattern*') lists the names")
    build = functools.partial(timm.create_model, name, num_classes=num_classes, in_chans=in_chans,
                              **timm_options)
    if weights is not None:
        model = build(pretrained=False)
        load_weights(model, weights)
        return model
    if not pretrained:
        return build(pretrained=False)
    try:
        with _offline_unless_reachable():
            return build(pretrained=True)
    except LocalEntryNotFoundError:
        raise LumbarFastError(
            f"cannot load pretrained weights for {name}: the Hugging Face hub is unreachable (or "
            "HF_HUB_OFFLINE is set) and not in its local cache; use --weights FILE or --no-pretrained"
        ) from None
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. a download that broke off, no pretrained tag
        raise LumbarFastError(
            f"cannot load pretrained weights for {name} ({first_line(exc)}); "
            "pass --weights FILE for a local file or --no-pretrained"
        ) from None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub accepts a TCP connection within `timeout_s`."""
    from huggingface_hub import constants as hub_constants

    url = urllib.parse.urlparse(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _offline_unless_reachable() -> Iterator[None]:
    """Hub downloads in offline mode (local cache only) when the hub is unreachable.

    Without this the hub client retries for about a minute before failing on a machine without network.
    """
    from huggingface_hub import constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = saved or not _hub_reachable()
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a timm checkpoint or state dict into `model`; a classifier of another shape is left fresh."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise LumbarFastError(f"weights file {path} does not exist")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch.load / safetensors raise many types for a file that is not weights
        raise LumbarFastError(f"cannot read weights from {path}: {type(exc).__name__}: {exc}") from None
    own = model.state_dict()
    head = _classifier_prefixes(model)
    state = {k: v for k, v in state.items()
             if not (k.startswith(head) and k in own and own[k].shape != getattr(v, "shape", None))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape outside the head
        raise LumbarFastError(f"weights in {path} do not fit {type(model).__name__}: "
                              f"{str(exc).strip().splitlines()[-1].strip()}") from None
    mismatched = [k for k in missing if not k.startswith(head)] + list(unexpected)
    if mismatched:
        raise LumbarFastError(
            f"weights in {path} do not fit {type(model).__name__}: {len(mismatched)} mismatched keys, "
            f"e.g. {mismatched[0]!r}"
        )


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """The state-dict key prefixes of the model's classifier head (timm's pretrained_cfg names it)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    names = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
    return tuple(f"{n}." for n in names)
