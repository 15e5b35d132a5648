"""CrystalDataset batching (tensor-only gather) and the Standardizer."""

import pytest
import torch

from dpcdvae.data.cache import CrystalDataset, save_split_dict, load_split
from dpcdvae.data.scalers import Standardizer, lattice_features, lattice_from_features


def _random_dataset(b: int = 37, seed: int = 0) -> CrystalDataset:
    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.randint(1, 21, (b,), generator=g)
    n = int(num_atoms.sum())
    props = torch.randn(b, 2, generator=g)
    props[::5, 1] = float("nan")
    return CrystalDataset(
        frac_coords=torch.rand(n, 3, generator=g),
        atom_types=torch.randint(1, 101, (n,), generator=g),
        num_atoms=num_atoms,
        lengths=torch.rand(b, 3, generator=g) * 5 + 3,
        angles=torch.rand(b, 3, generator=g) * 60 + 60,
        props=props,
        index=torch.arange(b) * 2 + 1,
        material_ids=[f"m{i}" for i in range(b)],
        prop_names=["p", "q"],
        meta={"dataset": "toy", "split": "val"},
    )


def _check_batch(ds: CrystalDataset, idx: torch.Tensor, batch) -> None:
    pos = 0
    for j, i in enumerate(idx.tolist()):
        lo, hi = int(ds.ptr[i]), int(ds.ptr[i + 1])
        k = hi - lo
        assert torch.equal(batch.frac_coords[pos : pos + k], ds.frac_coords[lo:hi])
        assert torch.equal(batch.atom_types[pos : pos + k], ds.atom_types[lo:hi])
        assert (batch.batch[pos : pos + k] == j).all()
        assert int(batch.num_atoms[j]) == k
        assert torch.equal(batch.lengths[j], ds.lengths[i]) and torch.equal(batch.angles[j], ds.angles[i])
        assert torch.equal(batch.props[j].nan_to_num(-9.0), ds.props[i].nan_to_num(-9.0))
        assert int(batch.index[j]) == int(ds.index[i])
        pos += k
    assert pos == batch.num_nodes


def test_batch_equals_per_crystal_slices():
    ds = _random_dataset()
    g = torch.Generator().manual_seed(1)
    for size in (1, 5, 37):
        idx = torch.randint(0, len(ds), (size,), generator=g)  # random order, repeats allowed
        _check_batch(ds, idx, ds.batch(idx))
    _check_batch(ds, torch.tensor([3, 3, 0]), ds[torch.tensor([3, 3, 0])])


def test_iter_batches_covers_the_split():
    ds = _random_dataset()
    g = torch.Generator().manual_seed(0)
    batches = list(ds.iter_batches(8, shuffle=True, generator=g))
    assert [b.num_graphs for b in batches] == [8, 8, 8, 8, 5]
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == ds.index.tolist() and seen.tolist() != ds.index.tolist()
    assert sum(b.num_nodes for b in batches) == ds.num_nodes
    assert [b.num_graphs for b in ds.iter_batches(8, drop_last=True)] == [8, 8, 8, 8]
    assert ds.num_batches(8) == 5 and ds.num_batches(8, drop_last=True) == 4
    again = list(ds.iter_batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a.index, b.index) for a, b in zip(batches, again))
    in_order = torch.cat([b.index for b in ds.iter_batches(10)])
    assert torch.equal(in_order, ds.index)


def test_round_trip_and_device(tmp_path):
    ds = _random_dataset()
    save_split_dict(tmp_path / "toy" / "val.pt", ds.to_dict())
    back = load_split(tmp_path, "toy", "val")
    for k in ("frac_coords", "atom_types", "num_atoms", "lengths", "angles", "index", "ptr"):
        assert torch.equal(getattr(back, k), getattr(ds, k))
    assert torch.equal(torch.isnan(back.props), torch.isnan(ds.props))
    assert back.material_ids == ds.material_ids and back.prop_names == ["p", "q"] and len(back) == 37
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    on = back.to(dev)
    b = on.batch(torch.tensor([4, 2], device=dev))
    assert b.frac_coords.device.type == dev and on.ptr.device.type == dev
    _check_batch(back, torch.tensor([4, 2]), b.to("cpu"))


def test_subset_keeps_ids():
    ds = _random_dataset()
    sub = ds.subset(torch.tensor([5, 0, 9]))
    assert len(sub) == 3 and sub.material_ids == ["m5", "m0", "m9"] and sub.prop_names == ["p", "q"]
    _check_batch(ds, torch.tensor([5, 0, 9]), sub.batch(torch.arange(3)))


def test_inconsistent_tensors_are_rejected():
    ds = _random_dataset()
    with pytest.raises(ValueError, match="inconsistent"):
        CrystalDataset(ds.frac_coords[:-1], ds.atom_types[:-1], ds.num_atoms, ds.lengths, ds.angles, ds.props,
                       ds.index)


def test_standardizer_nan_aware_and_invertible():
    x = torch.tensor([[1.0, float("nan"), float("nan")], [3.0, 2.0, float("nan")], [5.0, 4.0, float("nan")]])
    s = Standardizer.fit(x)
    assert s.mean[:2].tolist() == pytest.approx([3.0, 3.0])
    assert s.std[:2].tolist() == pytest.approx([(8 / 3) ** 0.5 + 1e-5, 1.0 + 1e-5])
    assert torch.isnan(s.mean[2]) and torch.isnan(s.std[2])
    y = torch.randn(4, 3)
    assert torch.allclose(s.inverse(s.transform(y))[:, :2], y[:, :2], atol=1e-5)
    assert torch.allclose(s.transform(y.double())[:, 0], (y[:, 0].double() - 3) / s.std[0].double())
    r = Standardizer.from_dict(s.to_dict())
    assert torch.equal(r.mean[:2], s.mean[:2]) and torch.isnan(r.std[2])
    assert s.select([1]).mean.tolist() == pytest.approx([3.0])


def test_lattice_features_inverse():
    lengths = torch.tensor([[4.0, 5.0, 6.0], [8.0, 8.0, 8.0]])
    angles = torch.tensor([[90.0, 100.0, 110.0], [60.0, 60.0, 60.0]])
    n = torch.tensor([1, 8])
    f = lattice_features(lengths, angles, n)
    assert f[1].tolist() == pytest.approx([4.0, 4.0, 4.0, 60.0, 60.0, 60.0])
    back_l, back_a = lattice_from_features(f, n)
    assert torch.allclose(back_l, lengths) and torch.allclose(back_a, angles)
