import pytest
import torch
from torch import nn

from kd.errors import ConfigError
from kd.methods.quantize import fake_quantize_activation, quantize_student
from kd.train import engine
from kd.train.distill import CrossEntropy, Distill
from kd.train.engine import TrainConfig
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


def test_activation_range_follows_a_running_max_in_training_and_is_frozen_for_eval():
    from kd.methods.quantize import RANGE_MOMENTUM, FakeQuantizedReLU

    relu = FakeQuantizedReLU(bits=8)
    relu(torch.tensor([0.0, 2.0]))  # the first batch sets the range
    assert relu.running_max.item() == 2.0
    relu(torch.tensor([1.0, 4.0]))  # then it moves by m toward each batch's max
    assert relu.running_max.item() == pytest.approx(2.0 + RANGE_MOMENTUM * (4.0 - 2.0))
    relu.eval()
    out = relu(torch.tensor([0.0, 1.0, 100.0]))  # clipped at the frozen range, not rescaled
    assert out[2].item() == pytest.approx(relu.running_max.item())
    assert relu.running_max.item() == pytest.approx(2.02)  # eval does not move it


def test_a_trained_quantized_students_prediction_does_not_depend_on_its_batch(monkeypatch):
    """The offline CIFAR-10 test split is sorted by class: with a range per batch, an image's
    prediction would depend on which images share its batch. In eval mode every activation
    range is the frozen running one, whatever the batch (checked on the ranges themselves, not
    on logits, whose rounding may differ with the batch size on some CPUs)."""
    from kd.methods import quantize

    model = quantize_student(student(0), weight_bits=4)
    engine.fit(model, tiny_cifar(), CrossEntropy(), TrainConfig(epochs=1, batch_size=16, lr=0.05),
               seed=0)
    model.eval()
    running = [m.running_max.clone() for m in model.modules()
               if isinstance(m, quantize.FakeQuantizedReLU)]
    assert running and all(r > 0 for r in running)
    ranges = []
    real = quantize.fake_quantize_activation
    monkeypatch.setattr(quantize, "fake_quantize_activation",
                        lambda out, bits, top=None: ranges.append(top) or real(out, bits, top))
    images = tiny_cifar().normalize(tiny_cifar().images)
    with torch.no_grad():
        for batch in (images, images[:1], images[[0, 5, 7]]):
            ranges.clear()
            model(batch)
            assert [r.item() for r in ranges] == [r.item() for r in running]
