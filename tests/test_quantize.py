import pytest
import torch
from torch import nn

from kd import engine
from kd.distill import CrossEntropy, Distill
from kd.engine import TrainConfig
from kd.errors import ConfigError
from kd.quantize import fake_quantize_activation, quantize_student
from tests.test_batched import student, teacher, tiny_cifar


@pytest.mark.parametrize("bits", [8, 4])
def test_weights_take_at_most_2_to_the_bits_levels_per_channel(bits):
    model = quantize_student(student(0), weight_bits=bits, activation_bits=None)
    conv = model.features[0]
    quantized, shadow = conv.weight, conv.parametrizations.weight.original
    for channel in range(quantized.shape[0]):
        levels = quantized[channel].unique()
        assert len(levels) <= 2 ** bits - 1
        step = shadow[channel].abs().max() / (2 ** (bits - 1) - 1)
        # every weight lands on a multiple of its channel's step, within half a step of the float
        torch.testing.assert_close(quantized[channel] / step, (quantized[channel] / step).round())
        assert (quantized[channel] - shadow[channel]).abs().max() <= step / 2 + 1e-6


def test_activations_are_rounded_to_unsigned_levels():
    x = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.55])
    q = fake_quantize_activation(x, 8)
    torch.testing.assert_close(q, torch.tensor([0.0, 0.1, 0.5, 1.0, 2.55]), atol=0.006, rtol=0)
    assert len(fake_quantize_activation(torch.rand(1000), 2).unique()) <= 4


def test_gradient_passes_the_rounding_and_the_quantized_student_trains_by_distillation():
    model = quantize_student(student(0), weight_bits=4)
    before = model.features[0].parametrizations.weight.original.detach().clone()
    history = engine.fit(model, tiny_cifar(), Distill(teacher(), 4.0, 0.9),
                         TrainConfig(epochs=2, batch_size=16, lr=0.05), seed=0).history
    after = model.features[0].parametrizations.weight.original
    assert not torch.equal(before, after)  # the straight-through gradient reached the shadow
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    # and the float model differs from the quantized one: the quantization is really applied
    plain = student(0)
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(quantize_student(student(0), 4).eval()(x), plain.eval()(x))


def test_bad_bit_widths_and_models_fail_clearly():
    with pytest.raises(ConfigError, match="bits"):
        quantize_student(student(0), weight_bits=1)
    with pytest.raises(ConfigError, match="no Conv2d or Linear"):
        quantize_student(nn.Sequential(nn.ReLU()))
    engine.fit(quantize_student(student(1), 8), tiny_cifar(), CrossEntropy(),
               TrainConfig(epochs=1, batch_size=16), seed=0)
