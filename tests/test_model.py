import math

import pytest
import torch

from textvae.anneal import KLSchedule
from textvae.errors import UserError
from textvae.model import Dropout, TextVAE, VAEConfig, gaussian_kl
from textvae.tokenizer import PAD

ENCODERS = ["gcnn", "lstm"]


def small(encoder="gcnn", **kw):
    cfg = dict(vocab_size=50, max_len=7, encoder=encoder, emb_dim=16, enc_hidden=16,
               latent=6, dec_hidden=16, dropout=0.0, refiner_dim=16, refiner_heads=2)
    torch.manual_seed(0)
    return TextVAE(VAEConfig(**{**cfg, **kw})).eval()


def lines(batch, max_len=7, vocab=50):
    idx = torch.randint(4, vocab, (batch, max_len))
    idx[0, 4:] = PAD  # one shorter line in every batch
    return idx


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_for_batch_one_and_more(encoder, batch):
    model = small(encoder)
    logits, mu, logvar = model(lines(batch))
    assert logits.shape == (batch, 7, 50)
    assert mu.shape == logvar.shape == (batch, 6)


def test_kl_equals_torch_distributions():
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(6), torch.ones(6))
    expected = torch.distributions.kl_divergence(q, p)
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-5)


def test_kl_is_zero_for_standard_normal():
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0


def test_loss_at_init_is_close_to_uniform_cross_entropy():
    model = small()
    terms = model.loss(lines(64), beta=0.0)
    per_position = terms["rec"].item() / 7
    assert abs(per_position - math.log(50)) < 0.5


def test_free_bits_floor_each_dimension_but_kl_is_reported_unchanged():
    model = small(refiner_layers=0)
    idx = lines(8)
    torch.manual_seed(1)
    plain = model.loss(idx, beta=1.0)
    torch.manual_seed(1)
    floored = model.loss(idx, beta=1.0, free_bits=5.0)
    assert torch.allclose(plain["kl"], floored["kl"])
    assert torch.allclose(floored["loss"], floored["rec"] + 5.0 * 6)  # every dim below 5


def test_free_bits_floor_each_dimension_not_the_total():
    # KL 50 nats in one dimension, 0 in five: a per-dimension floor of 5 optimises
    # 50 + 5 * 5; a floor on the total would optimise max(50, 30) = 50.
    model = small(refiner_layers=0)
    mu, logvar = torch.zeros(8, 6), torch.zeros(8, 6)
    mu[:, 0] = 10.0
    model.encode = lambda idx: (mu, logvar)
    terms = model.loss(lines(8), beta=1.0, free_bits=5.0)
    assert terms["kl"].item() == pytest.approx(50.0)
    assert (terms["loss"] - terms["rec"]).item() == pytest.approx(75.0)


def test_refiner_loss_is_added_and_leaves_the_latent_alone():
    model = small().train()
    idx = lines(8)
    terms = model.loss(idx, beta=1.0)
    assert torch.allclose(terms["loss"], terms["rec"] + terms["kl"] + terms["ref"])
    model.zero_grad()
    model.refiner_loss(idx, model.encode(idx)[0].detach()).backward()
    assert model.to_mu.weight.grad is None and model.refiner.out.weight.grad.abs().sum() > 0


def test_the_refiner_reads_only_the_characters_before_each_position():
    model = small()
    z, noise, idx = torch.randn(4, 6), torch.rand(4), lines(4)
    draft = model.decoder.features(z)
    later = idx.clone()
    later[:, 3:] = 9  # other characters from position 3 on
    a, b = model.refiner(idx, z, noise, draft), model.refiner(later, z, noise, draft)
    assert torch.allclose(a[:, :4], b[:, :4])            # output t reads x_<t only
    assert not torch.allclose(a[:, 4], b[:, 4])          # and does read them


def test_refiner_hears_the_characters_however_large_the_draft_grows():
    """The draft's projection is dense and trained every step; in the first refiner it
    grew to ~120x the norm of the (sparse) character embeddings and drowned them: read
    at noise 1, that refiner scored 10.5 bits a character, a unigram model's figure."""
    model = small()
    ref = model.refiner
    with torch.no_grad():
        ref.draft.weight.mul_(1000)
        z, noise = torch.randn(2, 6), torch.ones(2)
        idx = torch.full((2, 7), 4)
        idx[:, 0] = torch.tensor([5, 6])
        draft = model.decoder.features(z[:1]).expand(2, -1, -1)
        by_char = ref(idx, z[:1].expand(2, -1), noise, draft)[:, 1]  # same z, other char
        by_z = ref(idx[:1].expand(2, -1), z, noise, model.decoder.features(z))[:, 1]
    # At the next position, another character moves the output about as much as another
    # z does; drowned, ~1e-3 as much.
    assert (by_char[0] - by_char[1]).abs().mean() > 0.1 * (by_z[0] - by_z[1]).abs().mean()


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_the_gated_conv_is_torchs_convolution_computed_as_one_matmul(kernel):
    # Its weights are a Conv1d's (runs saved before load as they were), so its output
    # must be that Conv1d's, position for position.
    import torch.nn.functional as F
    from textvae.model import GatedConv
    torch.manual_seed(0)
    block, x = GatedConv(6, kernel), torch.randn(3, 7, 6)                 # (B, L, C)
    a, b = block.conv(x.transpose(1, 2)).transpose(1, 2).chunk(2, dim=-1)
    torch.testing.assert_close(block(x), x + a * F.sigmoid(b))


def test_the_cpu_dropout_drops_p_of_the_elements_at_random_and_scales_the_rest():
    torch.manual_seed(0)
    drop, x = Dropout(0.25), torch.ones(400_000, requires_grad=True)
    y = drop(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.004)
    assert torch.all((y == 0) | (y == 1 / 0.75))
    # neighbours are dropped independently, as they are 16 bits of the same draw
    kept = (y != 0).float().view(-1, 4)
    assert (kept[:, 0] * kept[:, 1]).mean().item() == pytest.approx(0.75 ** 2, abs=0.004)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where kept, scaled
    assert not torch.equal(drop(x), drop(x))
    assert drop.eval()(x) is x
    model = TextVAE(VAEConfig(vocab_size=30, max_len=5))
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]


def test_even_kernel_is_refused():
    with pytest.raises(UserError, match="--kernel must be odd"):
        small(kernel=4)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_no_gradient_flows_between_batch_items(encoder):
    model = small(encoder)
    idx = lines(4)
    emb = model.embed(idx).detach().requires_grad_(True)
    mu = model.to_mu(model.encoder(emb, idx != PAD))
    mu[2].sum().backward()
    grad = emb.grad.abs().sum(dim=(1, 2))
    assert grad[2] > 0
    assert grad[[0, 1, 3]].sum() == 0


@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_does_not_change_the_encoding(encoder):
    """The same line gives the same mu whatever the padding token embeds to."""
    model = small(encoder)
    idx = lines(2)
    mu1, _ = model.encode(idx)
    with torch.no_grad():
        model.embed.weight[PAD] = torch.randn(16) * 10
    mu2, _ = model.encode(idx)
    assert torch.allclose(mu1, mu2, atol=1e-5)


@pytest.mark.parametrize("positions", [True, False])
def test_the_gcnn_encoder_knows_where_a_character_stands_far_from_the_edges(positions):
    # R at position 5 or 8 of 14, Q around it for 4 characters each side: every window
    # a two-block GCNN sees (5 characters) is in both lines, only in other places.
    # Pooling over positions then cannot tell them apart unless positions are read.
    e, q, r = 5, 6, 7
    a = torch.tensor([[e] + [q] * 4 + [r] + [q] * 7 + [e]])
    b = torch.tensor([[e] + [q] * 7 + [r] + [q] * 4 + [e]])
    model = small(max_len=14, enc_positions=positions)
    with torch.no_grad():
        gap = (model.encode(a)[0] - model.encode(b)[0]).abs().max().item()
    assert (gap > 1e-3) if positions else (gap < 1e-5), gap


def test_a_config_saved_before_positions_existed_rebuilds_without_them():
    from textvae.run import upgrade_config
    saved = small().cfg.to_dict()
    del saved["enc_positions"]
    config = upgrade_config({"model": saved, "train": {}, "data": {"form": {"lengths": [5]}}})
    assert VAEConfig.from_dict(config["model"]).enc_positions is False
    assert VAEConfig().enc_positions is True


def test_bad_model_settings_are_user_errors():
    with pytest.raises(UserError, match="encoder"):
        VAEConfig(encoder="gru")
    with pytest.raises(UserError, match="latent"):
        VAEConfig(latent=0)


# -- KL schedules ---------------------------------------------------------------------------

def test_constant_schedule_is_flat():
    s = KLSchedule("constant", beta_max=0.7, total_steps=100)
    assert s(0) == s(50) == s(99) == 0.7


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_ramps_start_near_zero_and_reach_beta_max(kind):
    s = KLSchedule(kind, beta_max=1.0, total_steps=1000, warmup=200)
    assert s(0) < 0.01
    assert s(200) > 0.99 and s(900) > 0.99
    assert s(50) < s(100) < s(150)


def test_cyclical_schedule_restarts_each_cycle():
    s = KLSchedule("cyclical", beta_max=1.0, total_steps=400, cycles=4, ratio=0.5)
    for start in (0, 100, 200, 300):
        assert s(start) == 0.0
        assert s(start + 25) == pytest.approx(0.5)
        assert s(start + 50) == 1.0 and s(start + 99) == 1.0
    assert s(400) == 1.0  # past the end: stays at beta_max


def test_bad_schedule_is_a_user_error():
    with pytest.raises(UserError):
        KLSchedule("exponential")
