"""comp.models.mil: a backbone over each instance of a MIL row, pooled (mean, max, gated attention, GRU,
transformer) into one row's logits; built by comp.models.factory.create_mil_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comp.errors import UserError
from comp.models import POOLS, MilModel, create_mil_model, create_model, input_norm, load_pretrained
from comp.models.factory import set_backbone_trainable
from comp.train.optim import param_groups

B, N, K, SIDE = 2, 3, 4, 16
ORDERLESS = ("mean", "max", "attention")


def _model(pool: str, name: str = "resnet18", seed: int = 0, num_logits: int = K) -> MilModel:
    torch.manual_seed(seed)
    return create_mil_model(name, num_logits, pool).eval()


def _x(seed: int = 1, n: int = N) -> torch.Tensor:
    return torch.randn(B, n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["resnet18", "timm/test_vit"])
@pytest.mark.parametrize("pool", POOLS)
def test_shapes(pool, name):
    m = _model(pool, name)
    x = _x()
    with torch.no_grad():
        assert m(x).shape == (B, K)
        assert m.instance_weights.shape == (B, N) and m.instance_weights.dtype == torch.float32
        torch.testing.assert_close(m.instance_weights.sum(1), torch.ones(B))
        assert m.instance_logits(x).shape == (B, N, K)
        logits, inst = m(x, with_instances=True)
        assert logits.shape == (B, K) and inst.shape == (B, N, K)
        f = m.forward_features(x)
        assert f.shape[:2] == (B, N)
        assert m.forward_head(f, pre_logits=True).shape == (B, m.num_features)
        torch.testing.assert_close(m.forward_head(f), m(x))
        assert m(x[:, 0]).shape == (B, K)  # (B, 3, H, W): one instance per row
    assert {k.split(".")[0] for k in m.state_dict()} == ({"backbone", "head"} if pool in ("mean", "max")
                                                         else {"backbone", "pool", "head"})


@pytest.mark.parametrize("pool", POOLS)
def test_instance_order(pool):
    """mean, max and attention pool a set (any order, same output, weights permuted alike); gru and
    transformer read a sequence (slice order), so another order gives another output."""
    m = _model(pool)
    x, perm = _x(), torch.tensor([2, 0, 1])
    with torch.no_grad():
        y, w = m(x), m.instance_weights
        y_perm, w_perm = m(x[:, perm]), m.instance_weights
    if pool in ORDERLESS:
        torch.testing.assert_close(y_perm, y, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(w_perm, w[:, perm])
    else:
        assert not torch.allclose(y_perm, y, rtol=1e-3, atol=1e-4)


def test_gated_attention_is_ilse_eq_9():
    """a_k = softmax_k(w^T (tanh(V h_k) * sigm(U h_k))) and z = sum_k a_k h_k (arXiv 1802.04712, eq. 9),
    computed here by hand from the backbone's instance features."""
    m = _model("attention")
    x = _x()
    with torch.no_grad():
        h = m.backbone(x.flatten(0, 1)).view(B, N, -1)  # (B, N, F) pooled instance features
        p = m.pool
        scores = (torch.tanh(h @ p.V.weight.T + p.V.bias) * torch.sigmoid(h @ p.U.weight.T + p.U.bias)) \
            @ p.w.weight.T + p.w.bias
        a = scores.squeeze(-1).softmax(1)
        z = (a[..., None] * h).sum(1)
        torch.testing.assert_close(m(x), m.head(z), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.instance_weights, a)
    torch.testing.assert_close(a.sum(1), torch.ones(B))
    assert not torch.allclose(a, torch.full_like(a, 1 / N))  # learned weights, not the uniform ones


def test_max_weights_are_the_share_of_features_each_instance_wins():
    """Each feature's max counts for the instance that gives it, split evenly between tied instances."""
    h = torch.tensor([[[1.0, 0, 5, 0], [1, 2, 0, 0], [0, 0, 1, 0]]])  # (1, N=3, F=4)
    pooled, _, w = _model("max").pool(h)
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 2, 5, 0]]))
    third = 1 / 3
    torch.testing.assert_close(w, torch.tensor([[0.5 + 1 + third, 0.5 + 1 + third, third]]) / 4)
    m = _model("max")
    x = _x()
    with torch.no_grad():
        m(x)
        h = m.backbone(x.flatten(0, 1)).view(B, N, -1)
    torch.testing.assert_close(m.instance_weights, m.pool(h)[2])


@pytest.mark.parametrize("pool", POOLS)
def test_gradients_reach_the_backbone_pool_and_head(pool):
    m = _model(pool).train()
    logits, inst = m(_x(), with_instances=True)
    y = torch.tensor([0, 3])
    aux = F.cross_entropy(inst.flatten(0, 1), y.repeat_interleave(N))  # each instance against its row's target
    (F.cross_entropy(logits, y) + 0.5 * aux).backward()
    for prefix in ("backbone.", "pool.", "head."):
        grads = [p.grad for k, p in m.named_parameters() if k.startswith(prefix)]
        if prefix == "pool." and pool in ("mean", "max"):
            assert not grads
            continue
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), prefix
    assert m.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pool", ORDERLESS)
def test_one_instance_is_the_plain_model(pool):
    """With N=1, mean, max and attention (weight 1) pass the instance's features through: the MIL model is
    the plain model with the same weights (its fc as the head)."""
    torch.manual_seed(0)
    plain = create_model("resnet18", K).eval()
    m = _model(pool, seed=1)
    sd = plain.state_dict()
    m.backbone.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")})
    m.head.load_state_dict({"weight": sd["fc.weight"], "bias": sd["fc.bias"]})
    x = _x(n=1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x[:, 0]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.instance_logits(x)[:, 0], plain(x[:, 0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.instance_weights, torch.ones(B, 1))


@pytest.mark.parametrize("pool", POOLS)
def test_state_dict_round_trip(pool, tmp_path):
    m = _model(pool, seed=0)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    other = _model(pool, seed=1)
    other.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))  # strict
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(other(x), m(x))


def test_pretrained_weights_land_in_the_backbone(tmp_path):
    """create_mil_model loads through the kit's loader: a plain checkpoint (its fc left out) and a MIL
    checkpoint (its backbone.* weights) both give the backbone their weights; the head stays fresh."""
    torch.manual_seed(0)
    plain = create_model("resnet18", 10)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    m = create_mil_model("resnet18", K, "attention", pretrained=tmp_path / "plain.pth")
    want = {k: v for k, v in plain.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, want[k]) for k, v in m.backbone.state_dict().items())

    torch.save(_model("gru", seed=3).state_dict(), tmp_path / "mil.pth")
    m2 = create_mil_model("resnet18", K, "attention", pretrained=tmp_path / "mil.pth")
    src = _model("gru", seed=3).backbone.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in m2.backbone.state_dict().items())

    # and load_pretrained into a MIL model: another pool and head size are re-initialised, nothing else
    fresh = load_pretrained(m2, _model("mean", seed=4, num_logits=7).state_dict(), source="mil")
    assert fresh and all(k.startswith(("pool.", "head.")) for k in fresh)


def test_in_chans_one():
    m = create_mil_model("resnet18", K, "mean", in_chans=1).eval()
    with torch.no_grad():
        assert m(torch.randn(B, N, 1, SIDE, SIDE)).shape == (B, K)


def test_input_norm_is_the_backbones():
    assert input_norm(_model("attention", "timm/test_vit")) == input_norm(create_model("timm/test_vit", 0))
    assert input_norm(_model("attention", "timm/test_vit"))[0] == (0.5, 0.5, 0.5)  # not ImageNet's default
    assert input_norm(_model("mean"))[0] == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize("pool", ["attention", "gru"])
def test_frozen_backbone_warmup_trains_the_pool_and_head(pool):
    m = _model(pool).train()
    set_backbone_trainable(m, False)
    trainable = {k for k, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith(("pool.", "head.")) for k in trainable)
    groups = param_groups(m, lr=1e-3, backbone_lr_mult=0.1)
    head = {id(p) for g in groups if g["name"].startswith("head") for p in g["params"]}
    assert head == {id(p) for k, p in m.named_parameters() if k.startswith(("pool.", "head."))}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD(groups, lr=0.1)
    F.cross_entropy(m(_x()), torch.tensor([0, 1])).backward()
    opt.step()
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("pool.", "head.")) for k in changed)  # BN statistics untouched


@pytest.mark.parametrize("pool", POOLS)
def test_autocast(pool):
    m = _model(pool)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(_x())
    assert y.shape == (B, K) and torch.isfinite(y.float()).all()
    torch.testing.assert_close(m.instance_weights.sum(1), torch.ones(B))


def test_bad_pool_is_a_user_error_naming_the_key():
    with pytest.raises(UserError, match=r"mil\.pool.*'sum'.*attention"):
        create_mil_model("resnet18", K, "sum")
    with pytest.raises(UserError, match=r"mil\.pool"):
        MilModel(create_model("resnet18", 0), K, "Attention")


def test_a_backbone_with_a_classifier_is_refused():
    with pytest.raises(ValueError, match="num_classes=0"):
        MilModel(create_model("resnet18", 3), K, "mean")


def test_more_instances_than_the_transformers_positions():
    m = _model("transformer")
    with pytest.raises(UserError, match=r"mil\.instances"):
        m.pool(torch.zeros(1, m.pool.pos.shape[1] + 1, m.backbone.num_features))
