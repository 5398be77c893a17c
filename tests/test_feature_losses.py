import math

import pytest
import torch
from torch import nn

from kd.errors import ConfigError
from kd.losses import attention_loss, fsp_loss, hint_loss, rkd_loss, similarity_loss

SQRT2 = math.sqrt(2.0)


def randn(*shape, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(requires_grad)


def maps(*rows):
    """A [1, c, h, w] map from c nested lists of rows."""
    return torch.tensor([rows], dtype=torch.float32)


# Hint (FitNets) -------------------------------------------------------------------------------

def test_hint_loss_golden_value_without_regressor():
    # (1 − 0)² and (2 − 0)² averaged over the 2 entries: 5/2.
    assert hint_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)


def test_hint_loss_golden_value_with_1x1_conv_regressor():
    # One student channel [1, 2] mapped by weights 2 and −1 to [2, 4] and [−1, −2];
    # against a zero teacher: (4 + 16 + 1 + 4) / 4 entries = 6.25.
    regressor = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        regressor.weight.copy_(torch.tensor([2.0, -1.0]).reshape(2, 1, 1, 1))
    student = maps([[1.0, 2.0]])
    assert hint_loss(student, torch.zeros(1, 2, 1, 2), regressor).item() == pytest.approx(6.25)


def test_hint_loss_gradients_reach_student_and_regressor_not_teacher():
    regressor = nn.Conv2d(3, 5, kernel_size=1)
    student = randn(2, 3, 4, 4, seed=1, requires_grad=True)
    teacher = randn(2, 5, 4, 4, seed=2, requires_grad=True)
    hint_loss(student, teacher, regressor).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert regressor.weight.grad is not None and regressor.weight.grad.abs().sum() > 0


def test_hint_loss_shape_mismatch_raises():
    with pytest.raises(ConfigError, match=r"hint_loss: student feature and teacher feature"):
        hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ConfigError, match=r"regressor\(student feature\).*\(2, 4, 4, 4\)"):
        hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4), nn.Conv2d(3, 4, 1))


# Attention transfer ---------------------------------------------------------------------------

def test_attention_loss_golden_value_p1():
    # Student |f| = [3, 4, 0, 0] normalizes to [0.6, 0.8, 0, 0]; teacher to [1, 0, 0, 0].
    # 0.4² + 0.8² = 0.8.
    student = maps([[3.0, -4.0], [0.0, 0.0]])
    teacher = maps([[1.0, 0.0], [0.0, 0.0]])
    assert attention_loss(student, teacher, p=1).item() == pytest.approx(0.8, abs=1e-6)


def test_attention_loss_golden_value_averages_channels_and_batch():
    # Example 1: student |f|² = 1 at all 4 positions in both channels -> [1/2, 1/2, 1/2, 1/2];
    # teacher (3 channels, one non-zero) -> [1, 0, 0, 0]; 0.5² · 4 = 1.
    # Example 2: student and teacher put all attention on one position each, different ones: 2.
    # Mean over the batch: 1.5.
    student = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[1.0, -1.0], [-1.0, 1.0]]],
                            [[[0.0, 0.0], [0.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    teacher = torch.zeros(2, 3, 2, 2)
    teacher[0, 1, 0, 0] = 2.0
    teacher[1, 0, 0, 1] = -0.5
    assert attention_loss(student, teacher).item() == pytest.approx(1.5, abs=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_loss_matches_formula_on_random_maps(p):
    student, teacher = randn(3, 4, 5, 5, seed=3), randn(3, 6, 5, 5, seed=4)

    def attention(f):
        a = f.abs().pow(p).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    expected = ((attention(student) - attention(teacher)) ** 2).sum(1).mean()
    assert attention_loss(student, teacher, p).item() == pytest.approx(expected.item(), rel=1e-5)


def test_attention_loss_pools_the_attention_map_of_the_larger_feature():
    # Student 4x4, teacher 2x2. The student's top-left 2x2 block has |f|² = 1 with mixed signs:
    # pooling the attention map gives [[1, 0], [0, 0]], matching the first teacher exactly
    # (pooling the features first would have cancelled the signs to zero).
    student = torch.zeros(1, 1, 4, 4)
    student[0, 0, :2, :2] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    top_left, top_right = maps([[1.0, 0.0], [0.0, 0.0]]), maps([[0.0, 1.0], [0.0, 0.0]])
    assert attention_loss(student, top_left).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_loss(student, top_right).item() == pytest.approx(2.0, abs=1e-6)
    # Either side may be the larger one.
    assert attention_loss(top_right, student).item() == pytest.approx(2.0, abs=1e-6)


def test_attention_loss_pools_sizes_that_do_not_divide():
    student = randn(2, 3, 5, 7, seed=5, requires_grad=True)
    loss = attention_loss(student, randn(2, 4, 3, 3, seed=6))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_attention_loss_is_scale_invariant():
    student, teacher = randn(2, 3, 4, 4, seed=7), randn(2, 5, 4, 4, seed=8)
    base = attention_loss(student, teacher).item()
    assert base > 0.01
    assert attention_loss(3.0 * student, teacher).item() == pytest.approx(base, rel=1e-5)
    assert attention_loss(student, 0.25 * teacher).item() == pytest.approx(base, rel=1e-5)
    assert attention_loss(7.0 * student, 0.1 * teacher, p=1).item() == pytest.approx(
        attention_loss(student, teacher, p=1).item(), rel=1e-5)


def test_attention_loss_errors():
    with pytest.raises(ConfigError, match=r"attention_loss: feature maps must be \[b, c, h, w\]"):
        attention_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ConfigError, match="attention_loss: student and teacher batch sizes"):
        attention_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ConfigError, match="p must be > 0"):
        attention_loss(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4), p=0)


# Similarity preserving ------------------------------------------------------------------------

def test_similarity_loss_golden_value():
    # Student rows [1, 0], [0, 1]: G̃ = I, already row-normalized.
    # Teacher rows [1, 0], [1, 0]: G̃ = all ones, rows normalized to 1/√2.
    # ‖G_s − G_t‖²_F = 2 (1 − 1/√2)² + 2 (1/√2)² = 4 − 2√2; divided by b² = 4.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert similarity_loss(student, teacher).item() == pytest.approx(1 - SQRT2 / 2, abs=1e-6)
    assert similarity_loss(student, teacher).item() == pytest.approx(0.2928932, abs=1e-6)


def test_similarity_loss_matches_formula_on_random_maps():
    student, teacher = randn(4, 3, 2, 2, seed=9), randn(4, 7, 1, 1, seed=10)

    def gram(f):
        q = f.reshape(4, -1)
        g = q @ q.T
        return g / g.norm(dim=1, keepdim=True)

    expected = ((gram(student) - gram(teacher)) ** 2).sum() / 16
    assert similarity_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)


def test_similarity_loss_is_scale_invariant():
    student, teacher = randn(5, 3, 2, 2, seed=11), randn(5, 6, 2, 2, seed=12)
    base = similarity_loss(student, teacher).item()
    assert base > 0.01
    assert similarity_loss(4.0 * student, teacher).item() == pytest.approx(base, rel=1e-5)
    assert similarity_loss(student, 0.3 * teacher).item() == pytest.approx(base, rel=1e-5)


def test_similarity_loss_all_zero_example_has_finite_gradient():
    student = randn(3, 4, seed=31)
    student[0] = 0.0
    student.requires_grad_(True)
    teacher = randn(3, 5, seed=32)
    loss = similarity_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and student.grad.abs().max() < 1e3
    # Its row of G_s is zero, so it contributes ‖G_t,0‖² = 1 (one unit row) plus its column.
    g_t = teacher @ teacher.T
    g_t = g_t / g_t.norm(dim=1, keepdim=True)
    q = student.detach()[1:]
    g_s = q @ q.T
    g_s = g_s / g_s.norm(dim=1, keepdim=True)
    expected = (1 + (g_t[1:, 0] ** 2).sum() + ((g_s - g_t[1:, 1:]) ** 2).sum()) / 9
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_similarity_loss_errors():
    with pytest.raises(ConfigError, match="similarity_loss: student and teacher batch sizes"):
        similarity_loss(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="similarity_loss: .*at least 2 dimensions"):
        similarity_loss(torch.zeros(4), torch.zeros(4))


# Relational KD --------------------------------------------------------------------------------

# Student: a right isosceles triangle (0,0), (1,0), (0,1); teacher: three points on a line.
RKD_STUDENT = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
RKD_TEACHER = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
# Distances over their mean (2 + √2)/3 resp. 4/3: student 3 − 1.5√2 (twice) and 3√2 − 3,
# teacher 3/4, 3/2, 3/4. All differences are below 1, so ℓ = x²/2; the 6 ordered pairs sum to
# Σ x² over the 3 unordered ones = 48.375 − 33.75√2, and the mean over 9 pairs is:
RKD_DISTANCE = 5.375 - 3.75 * SQRT2
# Angle cosines at each vertex (student vs teacher): 0 vs 1, √2/2 vs −1, √2/2 vs 1;
# ℓ = 1/2, √2/2 + 1/2, (1 − √2/2)²/2, summing to 7/4; twice (both orders) over 27 triplets:
RKD_ANGLE = 7 / 54


def test_rkd_constants_are_what_we_worked_out():
    assert RKD_DISTANCE == pytest.approx(0.0716992, abs=1e-7)
    assert RKD_ANGLE == pytest.approx(0.1296296, abs=1e-7)


def test_rkd_loss_golden_values():
    distance = rkd_loss(RKD_STUDENT, RKD_TEACHER, distance_weight=1.0, angle_weight=0.0)
    angle = rkd_loss(RKD_STUDENT, RKD_TEACHER, distance_weight=0.0, angle_weight=1.0)
    assert distance.item() == pytest.approx(RKD_DISTANCE, abs=1e-6)
    assert angle.item() == pytest.approx(RKD_ANGLE, abs=1e-6)
    assert rkd_loss(RKD_STUDENT, RKD_TEACHER).item() == pytest.approx(
        25 * RKD_DISTANCE + 50 * RKD_ANGLE, abs=1e-5)


def test_rkd_loss_matches_loop_over_pairs_and_triplets():
    student, teacher = randn(4, 3, seed=13), randn(4, 5, seed=14)

    def huber(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    def relations(e):
        e = e.tolist()
        d = [[math.dist(a, b) for b in e] for a in e]
        mean = sum(map(sum, d)) / 12  # 4·3 off-diagonal pairs
        unit = [[[(x - y) / (d[j][i] or 1.0) for x, y in zip(e[i], e[j])] for i in range(4)]
                for j in range(4)]
        cos = {(i, j, k): sum(a * b for a, b in zip(unit[j][i], unit[j][k]))
               for i in range(4) for j in range(4) for k in range(4)}
        return [[x / mean for x in row] for row in d], cos

    d_s, a_s = relations(student)
    d_t, a_t = relations(teacher)
    distance = sum(huber(d_s[i][j] - d_t[i][j]) for i in range(4) for j in range(4)) / 16
    angle = sum(huber(a_s[key] - a_t[key]) for key in a_s) / 64
    assert rkd_loss(student, teacher, 2.0, 3.0).item() == pytest.approx(
        2 * distance + 3 * angle, rel=1e-5)


def test_rkd_loss_is_scale_invariant_in_both_terms():
    student, teacher = randn(6, 4, seed=15), randn(6, 8, seed=16)
    for weights in ((1.0, 0.0), (0.0, 1.0)):
        base = rkd_loss(student, teacher, *weights).item()
        assert base > 1e-3
        assert rkd_loss(5.0 * student, teacher, *weights).item() == pytest.approx(base, rel=1e-5)
        assert rkd_loss(student, 0.2 * teacher, *weights).item() == pytest.approx(base, rel=1e-5)


def test_rkd_loss_flattens_embeddings_and_has_finite_gradients():
    student = randn(5, 2, 3, 3, seed=17, requires_grad=True)
    teacher = randn(5, 4, 2, 2, seed=18, requires_grad=True)
    rkd_loss(student, teacher).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_rkd_loss_gradients_stay_finite_for_coinciding_embeddings():
    # Duplicates in the batch (and a batch of one point repeated) give zero distances.
    duplicates = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    repeated = torch.zeros(3, 2, requires_grad=True)
    for student in (duplicates, repeated):
        loss = rkd_loss(student, randn(3, 4, seed=30))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
        assert student.grad.abs().max() < 1e3


def test_rkd_loss_errors():
    with pytest.raises(ConfigError, match="rkd_loss: student and teacher batch sizes"):
        rkd_loss(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ConfigError, match="rkd_loss: needs a batch of at least 2"):
        rkd_loss(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="rkd_loss: weights must be >= 0"):
        rkd_loss(torch.zeros(3, 2), torch.zeros(3, 2), distance_weight=-1.0)


# FSP ------------------------------------------------------------------------------------------

def test_fsp_loss_golden_value():
    # f1 = [[1, 2], [3, 4]]; f2 channels I = [[1, 0], [0, 1]] and all ones:
    # G = [(1 + 4)/4, (1 + 2 + 3 + 4)/4] = [1.25, 2.5]; teacher's f2 is zero so G_t = 0.
    # 1.25² + 2.5² = 7.8125.
    f1 = maps([[1.0, 2.0], [3.0, 4.0]])
    f2 = maps([[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]])
    assert fsp_loss((f1, f2), (f1, torch.zeros(1, 2, 2, 2))).item() == pytest.approx(7.8125)


def test_fsp_loss_matches_formula_and_averages_over_batch():
    s1, s2 = randn(3, 2, 4, 4, seed=19), randn(3, 5, 4, 4, seed=20)
    t1, t2 = randn(3, 2, 6, 6, seed=21), randn(3, 5, 6, 6, seed=22)

    def fsp(f1, f2):
        h, w = f1.shape[2:]
        return torch.einsum("bixy,bjxy->bij", f1, f2) / (h * w)

    expected = ((fsp(s1, s2) - fsp(t1, t2)) ** 2).sum((1, 2)).mean()
    assert fsp_loss([s1, s2], [t1, t2]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_fsp_loss_pools_the_larger_map_of_a_pair():
    # f1 4x4 is average-pooled to f2's 2x2 over 2x2 blocks.
    f1 = randn(2, 3, 4, 4, seed=23)
    pooled = f1.reshape(2, 3, 2, 2, 2, 2).mean((3, 5))
    f2, t1, t2 = randn(2, 2, 2, 2, seed=24), randn(2, 3, 3, 3, seed=25), randn(2, 2, 3, 3, seed=26)
    assert fsp_loss((f1, f2), (t1, t2)).item() == pytest.approx(
        fsp_loss((pooled, f2), (t1, t2)).item(), rel=1e-5)
    assert fsp_loss((f2, f1), (t2, t1)).item() == pytest.approx(
        fsp_loss((f2, pooled), (t2, t1)).item(), rel=1e-5)


def test_fsp_loss_errors():
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4)
    with pytest.raises(ConfigError, match=r"FSP matrices must have one shape .*\(2, 3, 5\) and "
                                          r"\(2, 5, 3\)"):
        fsp_loss((a, b), (b, a))
    with pytest.raises(ConfigError, match="student features must be a pair"):
        fsp_loss(a, (a, b))
    with pytest.raises(ConfigError, match="teacher features must be a pair"):
        fsp_loss((a, b), (a, b, b))
    with pytest.raises(ConfigError, match=r"fsp_loss \(student pair\): .*batch sizes"):
        fsp_loss((a, torch.zeros(3, 5, 4, 4)), (a, b))
    with pytest.raises(ConfigError, match=r"fsp_loss \(teacher pair\): .*\[b, c, h, w\]"):
        fsp_loss((a, b), (a, torch.zeros(2, 5, 4)))


# All losses -----------------------------------------------------------------------------------

def _cases():
    f = randn(3, 4, 5, 5, seed=27)
    g = randn(3, 6, 5, 5, seed=28)
    return {
        "hint": lambda s, t: hint_loss(s, t),
        "attention": attention_loss,
        "similarity": similarity_loss,
        "rkd": rkd_loss,
        "fsp": lambda s, t: fsp_loss((s, g), (t, g.clone())),
    }, f


@pytest.mark.parametrize("name", ["hint", "attention", "similarity", "rkd", "fsp"])
def test_loss_is_zero_when_student_equals_teacher(name):
    losses, f = _cases()
    assert losses[name](f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert losses[name](f, f.flip(0).clone()).item() > 1e-3


@pytest.mark.parametrize("name", ["hint", "attention", "similarity", "rkd", "fsp"])
def test_gradients_reach_only_the_student(name):
    losses, f = _cases()
    student = (f + 0.1 * randn(*f.shape, seed=29)).requires_grad_(True)
    teacher = f.clone().requires_grad_(True)
    losses[name](student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0
