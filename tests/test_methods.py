import math

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from kd import data
from kd.data import Batch
from kd.errors import ConfigError
from kd.losses import attention_loss, fsp_loss, hint_loss, rkd_loss, similarity_loss
from kd.methods import (METHODS, FeatureDistiller, StudentWithHeads, build_method, default_taps,
                        resnet_taps)
from kd.models.cifar import CifarResNet, PlainCNN
from kd.train import engine
from kd.train.engine import TrainConfig

CONFIG = TrainConfig(epochs=1, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9,
                     schedule="constant")
FEATURE_TERMS = {"kd": [], "fitnets": ["hint"], "at": ["at"], "sp": ["sp"],
                 "rkd": ["rkd_distance", "rkd_angle"], "fsp": ["fsp"]}
# every registered method: the terms it logs besides "loss"
LOGGED = {**{name: ["ce", "kd", *terms] for name, terms in FEATURE_TERMS.items()},
          "mutual": ["ce", "kl"], "born_again": ["ce", "kd"], "multi_teacher": ["ce", "kd"],
          "multi_teacher_logmean": ["ce", "kd"],
          "random_teacher": ["ce", "kd"], "quantized": ["ce", "kd"], "label_smoothing": ["ce"]}
PAPERS = {"kd": "Hinton", "fitnets": "Romero", "at": "Zagoruyko", "sp": "Tung",
          "rkd": "Park", "fsp": "Yim", "mutual": "Zhang", "born_again": "Furlanello",
          "multi_teacher": "You", "multi_teacher_logmean": "You", "random_teacher": "Fukuda",
          "quantized": "Polino", "label_smoothing": "Szegedy"}


def tiny_cifar(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[torch.arange(n), labels % 3] += 120
    return data.Split(images, labels, (0.3, 0.3, 0.3), (0.25, 0.25, 0.25))


def student(seed=0):
    torch.manual_seed(seed)
    return CifarResNet(8)


def teacher():
    torch.manual_seed(99)
    return CifarResNet(14).eval()


def one_batch(split, n=16):
    return Batch(split.normalize(split.images[:n]), split.labels[:n], torch.arange(n))


def teacher_argument(name):
    """What build_method's teacher must be for ``name``: one, several, none, or its own
    architecture (born-again)."""
    if name == "born_again":
        torch.manual_seed(98)
        return CifarResNet(8).eval()
    second = CifarResNet(8).eval()
    return {"one": teacher(), "optional": teacher(), "none": None,
            "several": [teacher(), second]}[METHODS[name].teachers]


def test_registry_names_are_unique_and_documented():
    assert sorted(METHODS) == sorted(LOGGED) == sorted(PAPERS)
    assert len({cls.name for cls in METHODS.values()}) == len(METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.__doc__ and PAPERS[name] in cls.__doc__ and "Default" in cls.__doc__


def test_unknown_method_or_option_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown distillation method 'nope'.*fitnets.*rkd"):
        build_method("nope", student(), teacher())
    with pytest.raises(ConfigError, match="no option.*'gama'.*gamma"):
        build_method("sp", student(), teacher(), gama=1.0)


@pytest.mark.parametrize("name", sorted(LOGGED))
def test_every_method_trains_with_every_term_logged_and_only_the_student_learns(name):
    train = tiny_cifar()
    t = teacher_argument(name)
    teachers = [] if t is None else t if isinstance(t, list) else [t]
    t_before = [{k: v.clone() for k, v in m.state_dict().items()} for m in teachers]
    method = build_method(name, student(), t)
    model = engine.prepare_model(method.model, torch.device("cpu"))
    s_before = {k: v.clone() for k, v in model.state_dict().items()}
    history = engine.fit(model, train, method, CONFIG, seed=0).history
    record = history[-1]
    for term in ["loss", *LOGGED[name]]:
        assert all(map(math.isfinite, torch.tensor(record[f"train_{term}"]).reshape(-1))), term
    for m, before in zip(teachers, t_before):
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    assert any(not torch.equal(v, s_before[k]) for k, v in model.state_dict().items())
    trained = method.trained_student(model)
    assert set(trained.state_dict()) == set(student().state_dict()) or name == "quantized"
    assert engine.predict(trained, train).shape == (len(train), 10)


def test_a_teacher_of_the_wrong_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="'kd' takes a model as its teacher, got NoneType"):
        build_method("kd", student(), None)
    with pytest.raises(ConfigError, match="'mutual' takes None"):
        build_method("mutual", student(), teacher())
    with pytest.raises(ConfigError, match="list of at least 2 models"):
        build_method("multi_teacher", student(), [teacher()])
    with pytest.raises(ConfigError, match="own architecture"):
        build_method("born_again", student(), teacher())  # ResNet-14 teaching a ResNet-8


def test_fitnets_regressor_is_trained_through_method_model():
    method = build_method("fitnets", student(), teacher())
    assert isinstance(method.model, StudentWithHeads)
    regressor = method.heads["regressor"]
    assert tuple(regressor.weight.shape) == (32, 32, 1, 1)  # layer2 of resnet8 -> resnet14
    assert any(p is regressor.weight for p in method.model.parameters())
    before = regressor.weight.detach().clone()

    train = tiny_cifar()
    batch = one_batch(train)
    loss, _ = method(method.model, batch)
    loss.backward()
    assert regressor.weight.grad is not None and regressor.weight.grad.abs().sum() > 0
    method.model.zero_grad(set_to_none=True)

    engine.fit(method.model, train, method, CONFIG, seed=0)
    assert not torch.equal(regressor.weight.detach(), before)


def test_training_the_bare_student_of_a_method_with_heads_is_refused():
    method = build_method("fitnets", student(), teacher())
    with pytest.raises(ConfigError, match="method.model"):
        engine.fit(method.student, tiny_cifar(), method, CONFIG, seed=0)


def by_hand(model, paths, x):
    extractor = create_feature_extractor(model, {p: p for p in paths})
    with torch.no_grad():
        out = extractor(x)
    return [out[p] for p in paths]


@pytest.mark.parametrize("name", ["fitnets", "at", "sp", "rkd", "fsp"])
def test_feature_terms_match_the_loss_functions_on_the_tapped_features(name):
    s, t = student(), teacher()
    method = build_method(name, s, t)
    s.eval()  # batch norm on running statistics: the two forward passes agree exactly
    batch = one_batch(tiny_cifar())
    loss, terms = method(method.model, batch)
    f_s = by_hand(s, method.student_taps, batch.x)
    f_t = by_hand(t, method.teacher_taps, batch.x)
    if name == "fitnets":
        expected = {"hint": hint_loss(f_s[0], f_t[0], method.heads["regressor"])}
    elif name == "at":
        assert method.student_taps == ["layer1", "layer2", "layer3"]
        expected = {"at": sum(attention_loss(a, b) / (a.shape[2] * a.shape[3])
                              for a, b in zip(f_s, f_t))}
    elif name == "sp":
        assert method.student_taps == ["layer3"]
        expected = {"sp": similarity_loss(f_s[0], f_t[0])}
    elif name == "rkd":
        assert method.student_taps == ["avgpool"]
        expected = {"rkd_distance": rkd_loss(f_s[0], f_t[0], 1.0, 0.0),
                    "rkd_angle": rkd_loss(f_s[0], f_t[0], 0.0, 1.0)}
    else:
        assert method.student_taps == ["layer1", "layer2"]
        expected = {"fsp": fsp_loss(f_s, f_t)}
    weighted = terms["ce"].detach()
    for term, value in expected.items():
        assert terms[term].item() == pytest.approx(value.item(), rel=1e-5)
        weighted = weighted + method.weights[term] * value
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-5)


def test_kd_weight_adds_the_soft_target_term():
    s, t = student(), teacher()
    s.eval()
    batch = one_batch(tiny_cifar())
    plain = build_method("sp", s, t)
    mixed = build_method("sp", s, t, kd_weight=0.5, ce_weight=0.5)
    loss0, terms0 = plain(plain.model, batch)
    loss1, terms1 = mixed(mixed.model, batch)
    assert terms0["kd"].item() == pytest.approx(terms1["kd"].item())
    expected = 0.5 * terms1["ce"] + 0.5 * terms1["kd"] + 3000.0 * terms1["sp"]
    assert loss1.item() == pytest.approx(expected.item(), rel=1e-5)


def test_default_taps_for_cifar_resnets_and_plain_cnns_explicit_taps_elsewhere():
    assert resnet_taps(CifarResNet(8)) == {
        "stages": ["layer1", "layer2", "layer3"], "middle": ["layer2"], "last": ["layer3"],
        "pair": ["layer1", "layer2"], "embedding": ["avgpool"]}
    # a plain CNN's stages end at the ReLU before each max-pool: the ResNet stages' shapes
    torch.manual_seed(0)
    cnn = PlainCNN(6)
    taps = default_taps(cnn)
    assert taps["stages"] == ["features.5", "features.12", "features.19"]
    assert taps["embedding"] == ["features"]
    assert default_taps(PlainCNN(8))["embedding"] == ["hidden"]
    x = torch.zeros(2, 3, 32, 32)
    shapes = lambda m, paths: [tuple(f.shape) for f in by_hand(m.eval(), paths, x)]
    assert shapes(cnn, taps["stages"]) == shapes(CifarResNet(14), ["layer1", "layer2", "layer3"])
    for name in FEATURE_TERMS:  # every feature method pairs a ResNet and a plain CNN by default
        build_method(name, PlainCNN(6), teacher())
    cnn_student, cnn_teacher = PlainCNN(2), PlainCNN(4).eval()
    unknown = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                  torch.nn.LazyLinear(10))
    unknown(x)
    with pytest.raises(ConfigError, match="student_taps="):
        build_method("at", unknown, cnn_teacher)
    method = build_method("at", cnn_student, cnn_teacher, student_taps=["features.2"],
                          teacher_taps=["features.5"])
    engine.fit(method.model, tiny_cifar(), method, CONFIG, seed=0)
    with pytest.raises(ConfigError, match="no module 'features.99'"):
        build_method("sp", cnn_student, cnn_teacher, student_taps="features.99")
    with pytest.raises(ConfigError, match="fsp takes 2 tap"):
        build_method("fsp", student(), teacher(), student_taps="layer1")
    with pytest.raises(ConfigError, match="fsp_loss"):  # (16, 32) vs (16, 64) channels
        build_method("fsp", student(), teacher(), student_taps=["layer1", "layer2"],
                     teacher_taps=["layer1", "layer3"])


def test_kd_method_is_hinton_distill_with_its_defaults():
    method = build_method("kd", student(), teacher())
    assert method.model is method.student
    assert method.temperature.item() == 4.0 and method.alpha.item() == pytest.approx(0.9)
    assert isinstance(METHODS["fitnets"](student(), teacher()), FeatureDistiller)


def test_label_smoothing_loss_by_hand_on_two_examples_of_three_classes():
    """ε = 0.3, C = 3: the target puts 1 − ε + ε/3 = 0.8 on the label and 0.1 elsewhere.
    Example 1: logits (0, ln 2, 0), softmax (1/4, 1/2, 1/4), label 2:
        −(0.1 ln 1/4 + 0.1 ln 1/2 + 0.8 ln 1/4) = 1.9 ln 2
    Example 2: logits (ln 4, 0, 0), softmax (2/3, 1/6, 1/6), label 0:
        −(0.8 ln 2/3 + 0.2 ln 1/6) = 0.8 ln 1.5 + 0.2 ln 6"""
    logits = torch.tensor([[0.0, math.log(2), 0.0], [math.log(4), 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    method = build_method("label_smoothing", torch.nn.Identity(), epsilon=0.3)
    loss, terms = method(torch.nn.Identity(), Batch(logits, labels, torch.arange(2)))
    expected = (1.9 * math.log(2) + 0.8 * math.log(1.5) + 0.2 * math.log(6)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = (2 * math.log(2) + math.log(1.5)) / 2  # −ln 1/4 and −ln 2/3: the labels alone
    assert terms["ce"].item() == pytest.approx(plain, rel=1e-6)
    assert build_method("label_smoothing", torch.nn.Identity(), epsilon=0.0)(
        torch.nn.Identity(), Batch(logits, labels, torch.arange(2)))[0].item() == \
        pytest.approx(plain, rel=1e-6)


class FixedLogits(torch.nn.Module):
    """A teacher that answers T · ln p for every image: softmax at temperature T gives p."""

    def __init__(self, p, temperature):
        super().__init__()
        self.logits = torch.nn.Parameter(temperature * torch.tensor(p).log())

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_label_smoothing_epsilon_is_kds_mean_mass_off_the_label():
    """p_T = (0.5, 0.3, 0.2) for every image, labels 0, 1, 2, 0: the mass off the label is
    0.5, 0.7, 0.8, 0.5, mean 0.625; KD's target puts 0.9 · 0.625 = 0.5625 off the label
    (α = 0.9, T = 4), and q does so with ε · 2/3 = 0.5625, ε = 0.84375 (C = 3)."""
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    train = data.Split(images, torch.tensor([0, 1, 2, 0]), (0.5,) * 3, (0.25,) * 3,
                       num_classes=3)
    teacher = FixedLogits([0.5, 0.3, 0.2], temperature=4.0)
    method = build_method("label_smoothing", torch.nn.Identity(), teacher)
    assert method.epsilon is None  # set once, before training
    method.bind(train, augmented=True)  # from the unaugmented images all the same
    assert method.epsilon == pytest.approx(0.84375, rel=1e-6)
    other = build_method("label_smoothing", torch.nn.Identity(),
                         FixedLogits([0.5, 0.3, 0.2], temperature=2.0), alpha=0.5,
                         temperature=2.0)
    other.bind(train, augmented=False)
    assert other.epsilon == pytest.approx(0.5 * 0.625 * 1.5, rel=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_label_smoothing_trains_a_student_and_lists_its_options():
    from kd.methods import method_settings

    assert method_settings("label_smoothing") == {"alpha": 0.9, "epsilon": None,
                                                  "temperature": 4.0}
    assert METHODS["label_smoothing"].family == "control"
    train = tiny_cifar()
    method = build_method("label_smoothing", student(), teacher())
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    record = engine.fit(method.model, train, method, CONFIG, seed=0).history[-1]
    assert 0 < method.epsilon <= 1 and math.isfinite(record["train_loss"])
    assert math.isfinite(record["train_ce"])  # the plain cross-entropy, logged beside
    assert any(not torch.equal(v, before[k]) for k, v in method.model.state_dict().items())
    with pytest.raises(ConfigError, match="not both and not neither"):
        build_method("label_smoothing", student(), teacher(), epsilon=0.1)
    with pytest.raises(ConfigError, match="not both and not neither"):
        build_method("label_smoothing", student(), None)
    with pytest.raises(ConfigError, match=r"epsilon must be in \[0, 1\]"):
        build_method("label_smoothing", student(), epsilon=1.5)
