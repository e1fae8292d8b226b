"""Tests for flowcourse.vae: bounds, posteriors and their log-densities, on small random VAEs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowcourse import vae as V
from flowcourse.train import fit


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One thread: these tiny models only lose time to thread hand-offs on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _vae(posterior: str = "diag", latent: int = 2, n_layers: int = 3, hidden: int = 16) -> V.VAE:
    enc = V.Encoder(data_dim=12, hidden=hidden, depth=1)
    dec = V.Decoder(latent_dim=latent, data_dim=12, hidden=hidden, depth=1)
    if posterior == "diag":
        post = V.DiagonalPosterior(hidden, latent)
    elif posterior == "planar":
        post = V.PlanarPosterior(hidden, latent, n_layers)
    else:
        post = V.IAFPosterior(hidden, latent, n_layers, made_hidden=8)
    return V.VAE(enc, post, dec)


def _images(n: int = 5, dim: int = 12) -> torch.Tensor:
    return (torch.rand(n, dim, generator=torch.Generator().manual_seed(1)) > 0.5).float()


def _roughen(model: nn.Module, scale: float = 0.5) -> nn.Module:
    """Bigger random weights, so flow layers are far from the identity."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def test_closed_form_kl_matches_monte_carlo():
    mean = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    log_var = torch.tensor([[-0.7, 0.4], [0.1, -2.0]], dtype=torch.float64)
    eps = torch.randn(400_000, *mean.shape, dtype=torch.float64)
    z = mean + (0.5 * log_var).exp() * eps
    log_q = -0.5 * (eps**2 + log_var + math.log(2 * math.pi)).sum(-1)
    mc = (log_q - V.log_standard_normal(z)).mean(0)
    exact = V.gaussian_kl(mean, log_var)
    # Standard error of the MC mean is ~ 0.005 here.
    assert torch.allclose(mc, exact, atol=0.02), (mc, exact)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    reference = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(exact, reference, atol=1e-12)


def test_decoder_log_prob_is_bernoulli():
    dec = V.Decoder(latent_dim=2, data_dim=12, hidden=8, depth=1)
    x, z = _images(), torch.randn(3, 5, 2)
    expected = torch.distributions.Bernoulli(logits=dec(z)).log_prob(x).sum(-1)
    assert torch.allclose(dec.log_prob(x, z), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_flow_posterior_with_no_layers_gives_the_diagonal_elbo(kind):
    diag = _vae("diag")
    flow = _vae(kind, n_layers=0)
    flow.load_state_dict(diag.state_dict())
    x = _images()
    for analytic in (True, False):
        torch.manual_seed(3)
        a = diag.elbo(x, n_samples=4, analytic_kl=analytic)
        torch.manual_seed(3)
        b = flow.elbo(x, n_samples=4, analytic_kl=analytic)
        assert torch.equal(a, b)
    # The Monte Carlo KL agrees with the closed form in expectation.
    mc = flow.elbo(x, n_samples=20_000, analytic_kl=False)
    exact = diag.elbo(x, n_samples=20_000, analytic_kl=True)
    assert torch.allclose(mc, exact, atol=0.05), (mc, exact)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_flow_log_q_equals_change_of_variables_with_autograd_jacobian(kind):
    model = _roughen(_vae(kind, n_layers=3)).double()
    x = _images().double()
    h = model.encoder(x)
    s = model.posterior.sample(h, n_samples=1)
    assert s.z.shape == (1, 5, 2) and s.log_q.shape == (1, 5)
    assert s.log_det.abs().max() > 0.1, "flow layers are too close to the identity for a test"

    mean, log_var = model.posterior.gaussian(h)
    for i in range(len(x)):

        def push(z0, i=i):
            return model.posterior.transform(z0[None, None], h[i : i + 1])[0][0, 0]

        z0 = s.z0[0, i]
        jac = torch.autograd.functional.jacobian(push, z0)
        log_q0 = torch.distributions.Normal(mean[i], (0.5 * log_var[i]).exp()).log_prob(z0).sum()
        brute = log_q0 - torch.linalg.slogdet(jac).logabsdet
        assert torch.allclose(push(z0), s.z[0, i], atol=1e-12)
        assert torch.allclose(s.log_q[0, i], brute, atol=1e-10), (s.log_q[0, i], brute)
    # The density at given points (through the inverse) agrees with the sampler's log q.
    assert torch.allclose(model.log_q(s.z[0], x), s.log_q[0], atol=1e-8)


def test_iaf_layer_jacobian_is_triangular_in_its_order_with_the_reported_log_det():
    posterior = V.IAFPosterior(hidden=3, latent_dim=4, n_layers=1, made_hidden=12)
    layer = _roughen(posterior.layers[0]).double()  # the package's gated IAF step
    c = torch.randn(1, 3, dtype=torch.float64)
    z = torch.randn(1, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v[None], context=c)[0][0], z[0])
    order = layer.made.order
    permuted = jac[order][:, order]  # rows and columns in the layer's order
    assert torch.equal(permuted.triu(1), torch.zeros_like(permuted)), permuted
    assert (permuted.diagonal() > 0).all() and (permuted.diagonal() < 1).all()
    _, log_det = layer(z, context=c)
    assert torch.allclose(log_det[0], torch.linalg.slogdet(jac).logabsdet, atol=1e-12)
    back, inv_log_det = layer.inverse(layer(z, context=c)[0], context=c)
    assert torch.allclose(back, z, atol=1e-10) and torch.allclose(inv_log_det, -log_det)


def test_iwae_is_at_least_the_elbo_and_k1_is_the_elbo():
    model = _roughen(_vae("iaf"), 0.3)
    x = _images(8)
    torch.manual_seed(5)
    one = model.iwae(x, k=1)
    torch.manual_seed(5)
    single = model.elbo(x, n_samples=1, analytic_kl=False)
    assert torch.allclose(one, single, atol=1e-5)
    with torch.no_grad():
        elbo = model.elbo(x, n_samples=2000).mean()
        # IWAE with k = 1 is the ELBO in expectation: 4000 independent draws per image.
        iwae_1 = model.log_weights(x, 4000).mean()
        iwae_50 = model.iwae(x, k=50, chunk=7).mean()
        iwae_500 = model.iwae(x, k=500, chunk=64).mean()
    assert abs(float(iwae_1 - elbo)) < 0.05, (iwae_1, elbo)
    assert elbo < iwae_50 < iwae_500 + 0.02, (elbo, iwae_50, iwae_500)


def _wrong_elbo(model: V.VAE, x: torch.Tensor, n: int, mistake: str) -> torch.Tensor:
    h = model.encoder(x)
    s = model.posterior.sample(h, n)
    rec = model.decoder.log_prob(x, s.z)
    if mistake == "prior at z0":
        return (rec + V.log_standard_normal(s.z0) - s.log_q0 + s.log_det).mean(0)
    return (rec + V.log_standard_normal(s.z) - s.log_q0).mean(0)  # "no log-det"


@pytest.mark.parametrize("kind", ["planar", "iaf"])
@pytest.mark.parametrize("mistake", ["prior at z0", "no log-det"])
def test_planted_flow_elbo_mistakes_are_detectable(kind, mistake):
    model = _roughen(_vae(kind, n_layers=4), 0.5)
    x = _images(16)
    with torch.no_grad():
        torch.manual_seed(7)
        right = model.elbo(x, n_samples=500)
        torch.manual_seed(7)
        wrong = _wrong_elbo(model, x, 500, mistake)
    assert (right - wrong).abs().mean() > 0.1, (right - wrong).abs().mean()


@pytest.mark.parametrize("kind", ["diag", "planar", "iaf"])
def test_bad_shapes_raise_value_error(kind):
    model = _vae(kind)
    with pytest.raises(ValueError, match=r"\(batch, 12\)"):
        model.elbo(torch.zeros(3, 10))
    with pytest.raises(ValueError, match=r"\(batch, 12\)"):
        model.iwae(torch.zeros(12), k=5)
    with pytest.raises(ValueError, match="floating"):
        model.elbo(torch.zeros(3, 12, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(\.\.\., batch, 2\)"):
        model.log_joint(_images(), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="rows"):
        model.log_joint(_images(), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="latent points"):
        model.log_q(torch.zeros(5, 3), _images())
    with pytest.raises(ValueError, match="k must be"):
        model.iwae(_images(), k=0)
    with pytest.raises(ValueError, match="n_samples"):
        model.elbo(_images(), n_samples=0)


def test_mismatched_parts_raise_value_error():
    enc, dec = V.Encoder(12, 16, 1), V.Decoder(2, 12, 16, 1)
    with pytest.raises(ValueError, match="latent_dim"):
        V.VAE(enc, V.DiagonalPosterior(16, 3), dec)
    with pytest.raises(ValueError, match="features"):
        V.VAE(enc, V.DiagonalPosterior(8, 2), dec)
    with pytest.raises(ValueError, match="pixels"):
        V.VAE(enc, V.DiagonalPosterior(16, 2), V.Decoder(2, 10, 16, 1))


def test_fit_improves_the_elbo_and_early_stopping_restores_the_best():
    model = _vae("planar", n_layers=2)
    # Two prototype images with 5% of the pixels flipped: a latent variable explains them.
    gen = torch.Generator().manual_seed(2)
    prototypes = _images(2)
    flips = (torch.rand(64, 12, generator=gen) < 0.05).float()
    x = (prototypes[torch.arange(64) % 2] - flips).abs()
    with torch.no_grad():
        before = float(model.elbo(x, 50).mean())
    history = fit(
        model,
        x,
        loss=V.elbo_loss(),
        steps=200,
        batch_size=32,
        lr=3e-3,
        val_data=x[:16],
        val_loss=V.elbo_loss(8),
        eval_every=50,
        patience=3,
        progress=False,
    )
    with torch.no_grad():
        after = float(model.elbo(x, 50).mean())
    assert after > before + 2.0, (before, after)
    assert history.best_val is not None and history.best_step <= history.steps


def test_grid_log_marginal_agrees_with_iwae_and_is_converged():
    model = _roughen(_vae("diag"), 0.3)
    x = _images(6)
    with torch.no_grad():
        coarse = V.grid_log_marginal(model, x, resolution=200, chunk=5000)
        fine = V.grid_log_marginal(model, x, ((-7.0, 7.0), (-7.0, 7.0)), resolution=560)
        iwae = model.iwae(x, k=5000, chunk=1000)
    assert torch.allclose(coarse, fine, atol=1e-4), (coarse, fine)
    # IWAE is a stochastic lower bound: below log p(x) on average, close with k = 5000.
    assert (iwae <= fine + 0.05).all(), (iwae, fine)
    assert 0 <= (fine - iwae).mean() < 0.1, (iwae, fine)


def test_grid_posterior_is_normalised_and_needs_two_latent_dimensions():
    model = _vae("iaf")
    x = _images(2)
    density, log_px = V.grid_posterior(model, x, resolution=120)
    _, area = V.latent_grid(resolution=120)
    assert density.shape == (2, 120, 120)
    assert torch.allclose(density.sum((1, 2)) * area, torch.ones(2), atol=1e-5)
    assert torch.allclose(log_px, V.grid_log_marginal(model, x, resolution=120), atol=1e-5)
    with pytest.raises(ValueError, match="2-D latent"):
        V.grid_log_marginal(_vae("diag", latent=3), x)
    with pytest.raises(ValueError, match="bounds"):
        V.latent_grid(((1.0, -1.0), (0.0, 1.0)))
