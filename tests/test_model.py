"""The model factory: timm models by name, local weights, and one-line errors for offline machines."""

import pytest
import torch
from huggingface_hub import constants as hub_constants

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.models.backbone import _offline_unless_reachable, create_model

TINY = "test_efficientnet"


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """Never download: the hub client's offline switch, whatever the environment says."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_tiny_model_has_the_asked_classes_and_channels():
    model = create_model(TINY, num_classes=3, in_chans=3, pretrained=False).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    one_channel = create_model(TINY, num_classes=5, in_chans=1, pretrained=False).eval()
    assert one_channel(torch.zeros(1, 1, 64, 64)).shape == (1, 5)


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(LumbarFastError, match="unknown model 'efficientnet_v9'"):
        create_model("efficientnet_v9")


def test_offline_pretrained_names_both_ways_out():
    with pytest.raises(LumbarFastError, match="--weights FILE or --no-pretrained") as error:
        create_model(TINY, pretrained=True)
    assert "\n" not in str(error.value)


def test_unreachable_hub_fails_fast(monkeypatch):
    """Not offline, but nothing listens: the probe turns on offline mode instead of a minute of retries."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    with _offline_unless_reachable():
        assert hub_constants.HF_HUB_OFFLINE is True  # the download attempt reads the local cache only
    with pytest.raises(LumbarFastError, match="unreachable"):
        create_model(TINY, pretrained=True)
    assert hub_constants.HF_HUB_OFFLINE is False  # restored


@pytest.mark.parametrize("wrap", ["state_dict", "checkpoint", "ddp"])
def test_local_weights_load_with_another_head(tmp_path, wrap):
    """A 5-class state dict (plain, in a checkpoint dict, or with DDP's `module.` prefix) loads into a 3-class
    model: the backbone is copied, the head stays freshly initialised."""
    source = create_model(TINY, num_classes=5, pretrained=False)
    state = source.state_dict()
    if wrap == "checkpoint":
        state = {"state_dict": state, "model_name": TINY}
    elif wrap == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, tmp_path / "weights.pt")
    model = create_model(TINY, num_classes=3, weights=tmp_path / "weights.pt")
    loaded = model.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], source.state_dict()["conv_stem.weight"])
    assert loaded["classifier.weight"].shape == (3, source.classifier.in_features)


def test_weights_of_another_model_are_a_one_line_error(tmp_path):
    torch.save(create_model("test_resnet", pretrained=False).state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(LumbarFastError, match="do not fit"):
        create_model(TINY, weights=tmp_path / "resnet.pt")
    with pytest.raises(LumbarFastError, match="does not exist"):
        create_model(TINY, weights=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LumbarFastError, match="cannot read weights"):
        create_model(TINY, weights=tmp_path / "junk.pt")
