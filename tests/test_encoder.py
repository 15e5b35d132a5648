"""Symmetry, batching and input-validation tests of the crystal encoders (tiny sizes, CPU)."""

from __future__ import annotations

import pytest
import torch

from dpcdvae.geometry.lattice import lattice_from_params
from dpcdvae.nn.encoder import VARIANTS, CrystalEncoder

torch.set_num_threads(1)

# cutoff 4 Å on 3-5 Å cells keeps E and T small while every crystal has many images within range.
EXACT = dict(cutoff=4.0, max_neighbors=None, images="exact")


def _crystals(seed: int, num_atoms: list[int], dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    na = torch.tensor(num_atoms)
    n, b = int(na.sum()), len(num_atoms)
    lengths = 3.0 + 2.0 * torch.rand(b, 3, generator=g, dtype=dtype)
    angles = 75.0 + 30.0 * torch.rand(b, 3, generator=g, dtype=dtype)
    lattice = lattice_from_params(lengths, angles)
    frac = torch.rand(n, 3, generator=g, dtype=dtype)
    z = torch.randint(1, 101, (n,), generator=g)
    batch = torch.repeat_interleave(torch.arange(b), na)
    return frac, z, na, batch, lattice


def _model(variant: str, seed: int = 0, **kw) -> CrystalEncoder:
    torch.manual_seed(seed)
    return CrystalEncoder.tiny(variant, **{**EXACT, **kw}).double().eval()


def _orthogonal(seed: int, proper: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    if (torch.linalg.det(q) > 0) != proper:
        q = q * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    return q


def _assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> None:
    scale = max(a.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rtol * scale, (a - b).abs().max().item() / scale


@pytest.fixture(scope="module")
def models() -> dict[str, CrystalEncoder]:
    return {v: _model(v) for v in VARIANTS}


@pytest.fixture(scope="module")
def crystals():
    return _crystals(1, [3, 1, 4])


@pytest.fixture(scope="module")
def reference(models, crystals):
    with torch.no_grad():
        return {v: m(*crystals) for v, m in models.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_is_not_trivial(variant, models, crystals, reference):
    out = reference[variant]
    assert out.shape == (3, 16) and out.dtype == torch.float64 and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-3 * out.abs().max()  # crystals are told apart
    frac = crystals[0].clone()
    frac[0, 0] += 0.03  # a small move changes the encoding
    with torch.no_grad():
        moved = models[variant](frac, *crystals[1:])
    assert (moved[0] - out[0]).abs().max() > 1e-6 * out.abs().max()
    _assert_close(moved[1:], out[1:])  # ... of that crystal only


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("proper", [True, False])
def test_rotation_reflection_invariance(variant, proper, models, crystals, reference):
    frac, z, na, batch, lattice = crystals
    q = _orthogonal(7 if proper else 8, proper)
    with torch.no_grad():
        out = models[variant](frac, z, na, batch, lattice @ q.T)  # L' = L Q^T
    _assert_close(out, reference[variant])


@pytest.mark.parametrize("variant", VARIANTS)
def test_permutation_invariance(variant, models, crystals, reference):
    frac, z, na, batch, lattice = crystals
    g = torch.Generator().manual_seed(3)
    perm = torch.cat([torch.randperm(int(k), generator=g) + int(s)
                      for k, s in zip(na, torch.cumsum(na, 0) - na)])
    with torch.no_grad():
        out = models[variant](frac[perm], z[perm], na, batch, lattice)
    _assert_close(out, reference[variant])


@pytest.mark.parametrize("variant", VARIANTS)
def test_translation_and_integer_shift_invariance(variant, models, crystals, reference):
    frac, z, na, batch, lattice = crystals
    g = torch.Generator().manual_seed(4)
    shift = torch.rand(3, 3, generator=g, dtype=frac.dtype)[batch]
    ints = torch.randint(-3, 4, frac.shape, generator=g).to(frac.dtype)
    with torch.no_grad():
        out_t = models[variant](torch.remainder(frac + shift, 1.0), z, na, batch, lattice)
        out_i = models[variant](frac + ints, z, na, batch, lattice)
    _assert_close(out_t, reference[variant])
    _assert_close(out_i, reference[variant])


@pytest.mark.parametrize("variant", VARIANTS)
def test_equivalent_cell_vectors(variant, models, crystals, reference):
    """a' = a + b (unimodular change of basis): same crystal, same encoding."""
    frac, z, na, batch, lattice = crystals
    u = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=lattice.dtype)
    lat2 = u @ lattice  # rows a + b, b, c
    frac2 = frac @ torch.linalg.inv(u)  # f' = f U^-1 keeps f' L' = f L
    with torch.no_grad():
        out = models[variant](frac2 - torch.floor(frac2), z, na, batch, lat2)
    _assert_close(out, reference[variant])


@pytest.mark.parametrize("variant", ["dime", "dime+gine"])
def test_supercell_gives_same_vector(variant, models, crystals, reference):
    """A 2x1x1 supercell has the same mean (DimeNet++) and max (GINE) readouts."""
    frac, z, na, batch, lattice = crystals
    sel = batch == 0
    f0, z0 = frac[sel], z[sel]
    f2 = torch.cat([f0, f0 + torch.tensor([1.0, 0.0, 0.0], dtype=f0.dtype)]) * torch.tensor(
        [0.5, 1.0, 1.0], dtype=f0.dtype)
    lat2 = lattice[:1] * torch.tensor([2.0, 1.0, 1.0], dtype=f0.dtype).view(1, 3, 1)
    n2 = f2.shape[0]
    with torch.no_grad():
        out = models[variant](f2, torch.cat([z0, z0]), torch.tensor([n2]), torch.zeros(n2, dtype=torch.long),
                              lat2)
    _assert_close(out[0], reference[variant][0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_independence(variant, models, crystals, reference):
    frac, z, na, batch, lattice = crystals
    with torch.no_grad():
        for b in range(3):
            sel = batch == b
            out = models[variant](frac[sel], z[sel], na[b:b + 1], torch.zeros(int(na[b]), dtype=torch.long),
                                  lattice[b:b + 1])
            _assert_close(out[0], reference[variant][b])
        order = torch.tensor([2, 0, 1])
        idx = torch.cat([torch.nonzero(batch == b).flatten() for b in order])
        out = models[variant](frac[idx], z[idx], na[order], torch.repeat_interleave(torch.arange(3), na[order]),
                              lattice[order])
    _assert_close(out, reference[variant][order])


def test_union_symmetrization_is_order_independent_with_cap():
    frac, z, na, batch, lattice = _crystals(5, [6, 5])
    model = _model("dime", cutoff=5.0, max_neighbors=6, images="ref", symmetrize="union")
    perm = torch.cat([torch.randperm(6, generator=torch.Generator().manual_seed(0)),
                      6 + torch.randperm(5, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        _assert_close(model(frac[perm], z[perm], na, batch, lattice), model(frac, z, na, batch, lattice))


def test_default_graph_settings_and_fp32():
    """Reference settings (7 Å, 20 neighbours, 27 images) in fp32; integer shifts of atoms leave it
    unchanged, and bf16 autocast stays close with an fp32 result."""
    frac, z, na, batch, lattice = _crystals(6, [5, 2], dtype=torch.float32)
    torch.manual_seed(0)
    model = CrystalEncoder.tiny("dime+na+gine").eval()
    assert model.dimenet.max_neighbors == 20 and model.dimenet.cutoff == 7.0
    with torch.no_grad():
        out = model(frac, z, na, batch, lattice)
        shifted = model(frac + torch.tensor([1.0, -2.0, 0.0]), z, na, batch, lattice)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(frac, z, na, batch, lattice)
            graph = model.dimenet.build_graph(frac, lattice, na)
            rbf, sbf = model.dimenet.bases(graph, *model.dimenet.triplets(graph))
    assert out.dtype == low.dtype == rbf.dtype == sbf.dtype == graph.vec.dtype == torch.float32
    _assert_close(shifted, out, rtol=1e-5)
    _assert_close(low, out, rtol=0.1)


def test_one_atom_cell_triplet_rules():
    """Simple cubic, 1 atom, 6 neighbours: the geometric rule keeps 6*5 triplets (the supplement
    angle theta is 0 for the 6 straight ones and 90 deg for the rest); the reference's atom rule
    keeps none, and the encoder still runs."""
    frac = torch.zeros(1, 3, dtype=torch.float64)
    lattice = 3.0 * torch.eye(3, dtype=torch.float64).unsqueeze(0)
    args = (frac, torch.tensor([6]), torch.tensor([1]), torch.zeros(1, dtype=torch.long), lattice)
    outs = {}
    for rule in ("edge", "atom"):
        model = _model("dime", cutoff=3.5, triplet_exclusion=rule)
        graph = model.dimenet.build_graph(frac, lattice, torch.tensor([1]))
        idx_kj, idx_ji = model.dimenet.triplets(graph)
        vec, dist = graph.vec, graph.dist
        cos = (vec[idx_ji] * vec[idx_kj]).sum(-1) / (dist[idx_ji] * dist[idx_kj])
        if rule == "edge":
            assert graph.src.shape[0] == 6 and idx_kj.shape[0] == 30
            assert int((cos - 1).abs().lt(1e-9).sum()) == 6 and int(cos.abs().lt(1e-9).sum()) == 24
        else:
            assert idx_kj.shape[0] == 0
        torch.manual_seed(0)
        with torch.no_grad():
            outs[rule] = model(*args)
        assert torch.isfinite(outs[rule]).all()
    assert (outs["edge"] - outs["atom"]).abs().max() > 1e-6


def test_gradients_reach_all_parameters():
    frac, z, na, batch, lattice = _crystals(2, [3, 2], dtype=torch.float32)
    torch.manual_seed(0)
    model = CrystalEncoder.tiny("dime+na+gine")
    frac.requires_grad_(True)
    model(frac, z, na, batch, lattice).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert torch.isfinite(frac.grad).all() and frac.grad.abs().max() > 0
    # the reference's zero-initialised output layers: only they get gradient at init
    torch.manual_seed(0)
    ref = CrystalEncoder("dime", hidden_channels=16, out_emb_channels=16, out_channels=16, num_blocks=1)
    out = ref(frac, z, na, batch, lattice)
    assert out.abs().max() == 0
    out.sum().backward()
    assert ref.dimenet.output_blocks[0].lin.weight.grad.abs().max() > 0


def test_isolated_atoms_without_edges():
    model = CrystalEncoder.tiny("dime+na+gine")
    lattice = 20.0 * torch.eye(3).expand(2, 3, 3)
    out = model(torch.rand(2, 3), torch.tensor([3, 8]), torch.tensor([1, 1]), torch.tensor([0, 1]), lattice)
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    assert model.dimenet.build_graph(torch.rand(2, 3), lattice, torch.tensor([1, 1])).src.numel() == 0


def test_atomic_numbers_up_to_100_and_bad_inputs():
    frac, z, na, batch, lattice = _crystals(3, [2, 3], dtype=torch.float32)
    model = CrystalEncoder.tiny("dime+na+gine", max_atoms=4)
    z = z.clone()
    z[0], z[1] = 100, 1
    assert torch.isfinite(model(frac, z, na, batch, lattice)).all()
    bad_z = z.clone()
    bad_z[2] = 101
    with pytest.raises(ValueError, match="atomic numbers"):
        model(frac, bad_z, na, batch, lattice)
    with pytest.raises(ValueError, match="atomic numbers"):
        model(frac, z - z, na, batch, lattice)
    with pytest.raises(ValueError, match="max_atoms"):
        model(torch.rand(7, 3), torch.ones(7, dtype=torch.long), torch.tensor([2, 5]),
              torch.repeat_interleave(torch.arange(2), torch.tensor([2, 5])), lattice)
    with pytest.raises(ValueError, match="sum to N"):
        model(frac, z, torch.tensor([2, 2]), batch, lattice)
    with pytest.raises(ValueError, match="batch must be"):
        model(frac, z, na, batch.flip(0), lattice)
    with pytest.raises(ValueError, match="finite"):
        model(frac * float("nan"), z, na, batch, lattice)
    with pytest.raises(ValueError, match="variant"):
        CrystalEncoder("dime+schnet")


def test_embedding_block_equals_pyg_block_values_and_gradients():
    """Our AtomEmbeddingBlock gathers with index_select (fast backward with repeated indices); it must
    compute exactly PyG's EmbeddingBlock.forward (x[i], x[j]), values and gradients."""
    from torch_geometric.nn.models.dimenet import EmbeddingBlock

    from dpcdvae.nn.dimenet import AtomEmbeddingBlock

    torch.manual_seed(0)
    block = AtomEmbeddingBlock(6, 16, torch.nn.functional.silu, max_z=10)
    z = torch.randint(1, 11, (7,))
    rbf = torch.randn(40, 6)
    i, j = torch.randint(0, 7, (40,)), torch.zeros(40, dtype=torch.long)  # j: one index repeated 40 times
    ours = block(z, rbf, i, j)
    grads = torch.autograd.grad(ours.square().sum(), list(block.parameters()))
    pyg = EmbeddingBlock.forward(block, z, rbf, i, j)
    grads_pyg = torch.autograd.grad(pyg.square().sum(), list(block.parameters()))
    torch.testing.assert_close(ours, pyg, rtol=0, atol=0)
    for a, b in zip(grads, grads_pyg):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
