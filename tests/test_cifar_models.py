import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from kd.errors import ConfigError
from kd.models import MODELS, build_model, parameter_count
from kd.models.cifar import CifarResNet, PlainCNN, WideResNet, flops_per_image


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet8", "resnet20", "plain_cnn2",
                                  "plain_cnn4", "plain_cnn6", "plain_cnn8", "plain_cnn10",
                                  "wrn16_1", "wrn16_2", "wrn40_1"])
def test_every_cifar_model_maps_images_to_logits(name):
    model = build_model(name, num_classes=10).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_parameter_counts_match_the_architectures():
    # He et al. report 0.27M parameters for ResNet-20 (0.078M for ResNet-8 by the same count).
    assert parameter_count(CifarResNet(20)) == pytest.approx(0.27e6, rel=0.03)
    assert parameter_count(build_model("resnet18_cifar")) == pytest.approx(11.17e6, rel=0.01)
    # 2-layer plain CNN, by hand: conv 3*16*9 + BN 32 + conv 16*16*9 + BN 32 + FC 16*8*8*10 + 10
    assert parameter_count(PlainCNN(2)) == 432 + 32 + 2304 + 32 + 10240 + 10


def test_depth_grows_and_bad_depths_fail():
    blocks = lambda model: sum(1 for n, _ in model.named_modules() if n.count(".") == 1
                               and n.startswith("layer"))
    assert blocks(CifarResNet(8)) == 3 and blocks(CifarResNet(56)) == 27
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        CifarResNet(21)
    with pytest.raises(ConfigError, match="plain CNN layers"):
        PlainCNN(3)


def test_features_are_reachable_by_name():
    extractor = create_feature_extractor(CifarResNet(8).eval(), {"layer2": "mid", "fc": "logits"})
    out = extractor(torch.zeros(1, 3, 32, 32))
    assert out["mid"].shape == (1, 32, 16, 16) and out["logits"].shape == (1, 10)


def test_flops_per_image():
    # The 2-layer plain CNN by hand: 2 FLOPs per multiply-add.
    expected = 2 * (32 * 32 * 16 * 27 + 16 * 16 * 16 * 144 + 1024 * 10)
    assert flops_per_image(PlainCNN(2)) == expected
    assert flops_per_image(CifarResNet(56)) > flops_per_image(CifarResNet(20)) > 0


def wide_resnet_parameters(depth: int, k: int, classes: int = 10) -> int:
    """WRN-depth-k counted by hand: 3x3 convs without bias, BN weight + bias, 1x1 projections
    where the width changes, final BN and fc."""
    n = (depth - 4) // 6
    count, channels = 3 * 16 * 9, 16
    for width in (16 * k, 32 * k, 64 * k):
        for block in range(n):
            inp = channels if block == 0 else width
            count += 2 * inp + inp * width * 9 + 2 * width + width * width * 9
            count += inp * width if inp != width else 0  # the projection shortcut
        channels = width
    return count + 2 * channels + channels * classes + classes


@pytest.mark.parametrize("depth, k, published", [(16, 1, 0.175e6), (40, 2, 2.2e6),
                                                 (28, 10, 36.5e6)])
def test_wide_resnet_parameter_counts(depth, k, published):
    # Zagoruyko & Komodakis (2016) and the KD papers quote 0.175M, 2.2M and 36.5M.
    with torch.device("meta"):  # WRN-28-10 without allocating its 146 MB of weights
        model = WideResNet(depth, k)
    assert parameter_count(model) == wide_resnet_parameters(depth, k)
    assert parameter_count(model) == pytest.approx(published, rel=0.02)


def test_wide_resnet_bad_settings_fail():
    for depth in (4, 8, 20, 27):  # 6n + 4 needs n >= 1
        with pytest.raises(ConfigError, match="6n \\+ 4"):
            WideResNet(depth, 1)
    with pytest.raises(ConfigError, match="widen_factor"):
        WideResNet(16, 0)
    assert sorted(n for n in MODELS if n.startswith("wrn")) == [
        "wrn16_1", "wrn16_2", "wrn16_4", "wrn16_8", "wrn28_10", "wrn40_1", "wrn40_2", "wrn40_4"]


def test_wide_resnet_features_are_reachable_by_name():
    model = WideResNet(16, 2, num_classes=7, dropout=0.3).eval()
    extractor = create_feature_extractor(model, {"layer1": "early", "layer3": "late",
                                                 "relu": "final", "fc": "logits"})
    out = extractor(torch.zeros(2, 3, 32, 32))
    assert out["early"].shape == (2, 32, 32, 32) and out["late"].shape == (2, 128, 8, 8)
    assert out["final"].min() >= 0 and out["logits"].shape == (2, 7)
