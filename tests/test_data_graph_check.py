"""check-graph: our exact periodic radius graph equals pymatgen's neighbour list on real crystals."""

import pytest

from dpcdvae.cli import main
from dpcdvae.data.graph_check import check_graph, compare_edges


@pytest.mark.parametrize("dataset,split", [("perov_5", "test"), ("carbon_24", "val"), ("mp_20", "val")])
def test_real_structures_match_pymatgen(shared_data, dataset, split):
    res = check_graph(shared_data, dataset, split, limit=6, cutoff=7.0)
    assert res.n_structures == 6 and res.n_edges > 0
    assert res.n_mismatches == 0, res.lines()
    assert res.max_dist_diff < 1e-4
    assert res.lines()[-1] == "mismatches: 0 of 6 structures"


def test_cli_last_line(shared_data, capsys):
    rc = main(["data", "check-graph", "--source", str(shared_data), "--dataset", "carbon_24", "--split", "test",
               "--limit", "3", "--cutoff", "5.0"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1] == "mismatches: 0 of 3 structures"


def test_compare_edges_detects_differences():
    ours = {(0, 1, (0, 0, 0)): 2.0, (0, 1, (1, 0, 0)): 6.99995}
    theirs = {(0, 1, (0, 0, 0)): 2.0}
    assert compare_edges(ours, theirs, cutoff=7.0, tol=1e-4) == (0, 0, 0.0)  # only a cutoff-boundary edge
    theirs2 = {(0, 1, (0, 0, 0)): 2.001, (1, 0, (0, 0, 0)): 2.0}
    only_ours, only_theirs, diff = compare_edges(ours, theirs2, cutoff=7.0, tol=1e-4)
    assert (only_ours, only_theirs) == (0, 1) and diff == pytest.approx(1e-3)


def test_a_wrong_graph_is_reported(shared_data, monkeypatch):
    import dpcdvae.geometry.graph as graph_mod

    exact = graph_mod.radius_graph_pbc

    def only_27_images(frac, lattice, num_atoms, cutoff, max_neighbors=None, images="exact", **kw):
        return exact(frac, lattice, num_atoms, cutoff, max_neighbors, images="ref", **kw)

    monkeypatch.setattr(graph_mod, "radius_graph_pbc", only_27_images)
    res = check_graph(shared_data, "carbon_24", "val", limit=6, cutoff=7.0)
    assert res.n_mismatches > 0 and all(m.only_pymatgen > 0 and m.only_ours == 0 for m in res.mismatches)
    assert res.lines()[-1] == f"mismatches: {res.n_mismatches} of 6 structures"
