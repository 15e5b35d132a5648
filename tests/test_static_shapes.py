"""The static-shape training step (train.static_shapes): padded graphs, triplets, losses and gradients equal
the eager ones on the real part; sink atoms / edges contribute nothing; no data-dependent op (CPU, tiny)."""

import pytest
import torch

from dpcdvae.config import apply_overrides, load_config
from dpcdvae.data.padding import atom_bucket, one_bucket_atoms, pad_batch
from dpcdvae.geometry.graph import radius_graph_pbc
from dpcdvae.geometry.lattice import lattice_from_params
from dpcdvae.geometry.static_graph import dimenet_triplets_static, radius_graph_static, static_sizes
from dpcdvae.geometry.triplets import dimenet_triplets, gemnet_triplets
from dpcdvae.models.dpcdvae import LOSS_KEYS
from dpcdvae.models.static import draw_step_noise, static_forward
from dpcdvae.nn.gemnet import GemNetT
from dpcdvae.training.static_step import StaticStep

from static_helpers import eager_forward, random_batch, tiny_model

# non-zero DimeNet++ output init, so that the encoder (and its padded graph) matters for the losses
ENC = ["model.encoder_cfg.output_initializer=glorot_orthogonal"]


def _graphs(seed, cutoff=5.0, k=8, crystals=10, multiple=16):
    b = random_batch(crystals, seed)
    g = radius_graph_pbc(b.frac_coords, lattice_from_params(b.lengths, b.angles), b.num_atoms, cutoff, k)
    pb = pad_batch(b, atom_bucket(b.num_nodes, multiple))
    sg = radius_graph_static(pb.frac_coords, lattice_from_params(pb.lengths, pb.angles), pb.num_atoms, pb.batch,
                             pb.atom_mask, cutoff, k, static_sizes(pb.num_nodes, k, 6))
    return b, g, pb, sg


def _edge_set(g, n):
    return {(int(s), int(t), *map(int, o)) for s, t, o in zip(g.src[:n], g.dst[:n], g.offsets[:n])}


@pytest.mark.parametrize("seed,cutoff,k", [(0, 5.0, 8), (1, 7.0, 20), (2, 7.0, 4)])
def test_padded_graph_equals_eager_graph(seed, cutoff, k):
    b, g, pb, sg = _graphs(seed, cutoff, k)
    e, pg = g.num_edges, sg.graph
    assert not bool(sg.overflow) and int(sg.edge_mask.sum()) == e and bool(sg.edge_mask[:e].all())
    assert _edge_set(pg, e) == _edge_set(g, g.num_edges)
    for name in ("src", "dst", "offsets", "id_swap"):  # even the order is the eager one
        assert torch.equal(getattr(pg, name)[:e], getattr(g, name)), name
    torch.testing.assert_close(pg.vec[:e], g.vec, rtol=0, atol=1e-6)
    sink = pb.num_nodes - 1
    assert bool((pg.src[e:] == sink).all() & (pg.dst[e:] == sink).all() & (pg.offsets[e:] == 0).all())
    assert bool((pg.dist[e:] == cutoff).all() & (pg.vec[e:] == 0).all())
    assert torch.equal(pg.id_swap[e:], torch.arange(e, pg.src.shape[0]))
    assert torch.equal(pg.id_swap[pg.id_swap], torch.arange(pg.src.shape[0]))


@pytest.mark.parametrize("exclude", ["edge", "atom"])
def test_padded_dimenet_triplets_equal_eager(exclude):
    _, g, _, sg = _graphs(3)
    kj, ji = dimenet_triplets(g, exclude)
    skj, sji, mask, overflow = dimenet_triplets_static(sg, exclude)
    t = kj.shape[0]
    assert not bool(overflow) and int(mask.sum()) == t and skj.shape[0] == sg.sizes.num_triplets
    assert torch.equal(skj[:t], kj) and torch.equal(sji[:t], ji)
    # sink triplets: kj = ji = a sink edge, cycling over all of them (no edge row takes them all)
    e, e_pad = g.num_edges, sg.graph.src.shape[0]
    assert torch.equal(skj[t:], sji[t:]) and not bool(sg.edge_mask[skj[t:]].any())
    expect = e + torch.arange(skj.shape[0] - t) % (e_pad - e)
    assert torch.equal(skj[t:], expect)
    assert int(torch.bincount(skj[t:]).max()) <= -(-(skj.shape[0] - t) // (e_pad - e))


def _layout_triplets(bases, edge_mask):
    """(id_ca, id_ba) pairs of the atom-padded layout: slot pairs (out i, in j) with Y_0 != 0."""
    n, d = bases.num_nodes, bases.width
    edge_of_slot = {int(s): e for e, s in enumerate(bases.slot.tolist()) if bool(edge_mask[e])}
    y0 = bases.trip_y.view(n, d, -1, d)[:, :, 0, :]  # [N, D(out), D(in)]
    return {(edge_of_slot[a * d + i], edge_of_slot[a * d + j]) for a, i, j in y0.nonzero().tolist()}


def test_gemnet_triplet_layout_equals_eager_triplets():
    _, g, _, sg = _graphs(4)
    gem = GemNetT(emb_size_atom=8, emb_size_edge=8, num_blocks=1, num_radial=8, num_spherical=3, emb_size_rbf=4,
                  emb_size_cbf=4, emb_size_trip=4, emb_size_bil_trip=4, cutoff=5.0)
    bases, _ = gem.edge_bases(sg.graph, sg.sizes.max_degree, sg.edge_mask)
    trip = gemnet_triplets(g)
    assert _layout_triplets(bases, sg.edge_mask) == set(zip(trip.id_ca.tolist(), trip.id_ba.tolist()))
    e = g.num_edges
    assert bool((bases.rbf[e:] == 0).all() & (bases.rbf3[e:] == 0).all() & (bases.rbf_out[e:] == 0).all())
    sink_row = bases.trip_y[-1]
    assert bool((sink_row == 0).all())  # the slot shared by the sink edges forms no triplet


@pytest.fixture
def float64():
    """Default dtype float64 for one test (restored after it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_sink_atoms_and_edges_contribute_nothing(float64):
    """GemNet-T on the padded graph: real outputs equal the unpadded ones; moving or retyping the sink
    atoms changes no real output, bit for bit, and no gradient reaches them. In float64: the padded and
    the eager layout add the same terms in other orders, which in fp32 differs by ~1e-7 of the output's
    scale (1.4e-5 relative on a small element, varying with the CPU's kernels), in float64 by ~1e-15."""
    b, g, pb, sg = _graphs(5)
    assert sg.graph.vec.dtype == torch.float64
    torch.manual_seed(0)
    gem = GemNetT(emb_size_atom=8, emb_size_edge=8, num_blocks=2, num_radial=8, num_spherical=3, emb_size_rbf=4,
                  emb_size_cbf=4, emb_size_trip=4, emb_size_bil_trip=4, cutoff=5.0)
    h = torch.randn(pb.num_nodes, 8, requires_grad=True)
    n = b.num_nodes
    vec, hf = gem(h, sg.graph, width=sg.sizes.max_degree, edge_mask=sg.edge_mask)
    vec0, hf0 = gem(h[:n], g)
    torch.testing.assert_close(vec[:n], vec0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hf[:n], hf0, rtol=1e-10, atol=1e-10)
    (vec[:n].square().sum() + hf[:n].sum()).backward()
    assert bool((h.grad[n:] == 0).all())
    h2 = h.detach().clone()
    h2[n:] = 100.0 * torch.randn(pb.num_nodes - n, 8)
    vec2, hf2 = gem(h2, sg.graph, width=sg.sizes.max_degree, edge_mask=sg.edge_mask)
    assert torch.equal(vec2[:n], vec[:n]) and torch.equal(hf2[:n], hf[:n])


def _compare(seed, encoder="dime", teacher=True, crystals=12, multiple=16):
    b = random_batch(crystals, seed)
    model = tiny_model(b, encoder, overrides=ENC)
    pb = pad_batch(b, atom_bucket(b.num_nodes, multiple))
    noise = draw_step_noise(model, pb.num_graphs, pb.num_nodes, "cpu", torch.Generator().manual_seed(seed))
    eager_out = {}
    eager = eager_forward(model, b, noise, teacher, 3.0, eager_out)
    padded = static_forward(model, pb, noise, teacher, torch.tensor(3.0), return_outputs=True)
    return model, b, eager, eager_out, padded


@pytest.mark.parametrize("seed,encoder,teacher", [(0, "dime", True), (1, "dime", False), (2, "dime+na+gine", True),
                                                  (3, "dime+gine", False)])
def test_padded_losses_and_outputs_equal_eager(seed, encoder, teacher):
    _, b, eager, eager_out, padded = _compare(seed, encoder, teacher)
    assert not bool(padded["overflow"])
    for key in LOSS_KEYS + ("loss", "val_criterion"):
        torch.testing.assert_close(padded[key], eager[key], rtol=1e-5, atol=1e-6, msg=key)
    n = b.num_nodes
    torch.testing.assert_close(padded["pred"][:n], eager_out["pred"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded["type_logits"][:n], eager_out["type_logits"], rtol=1e-5, atol=1e-6)


def test_padded_gradients_equal_eager():
    model, _, eager, _, padded = _compare(6, "dime+na", teacher=False)
    params = [p for p in model.parameters() if p.requires_grad]
    g_eager = torch.autograd.grad(eager["loss"], params, allow_unused=True)
    g_padded = torch.autograd.grad(padded["loss"], params, allow_unused=True)
    checked = 0
    for p, a, c in zip(params, g_eager, g_padded):
        if a is None:
            assert c is None or bool((c == 0).all())
            continue
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)
        checked += int(bool(a.abs().sum() > 0))
    assert checked > 0.8 * len(params)


def test_every_bucket_runs_and_shapes_repeat():
    """Batches of different atom counts fall into a few buckets; each runs, finite, without overflow."""
    step = StaticStep(tiny_model(random_batch(4, 0)), atom_multiple=16)
    keys = set()
    for seed, crystals in enumerate([2, 3, 5, 8, 9, 13]):
        b = random_batch(crystals, 10 + seed)
        out, nonfinite = step(b, teacher_forcing=seed % 2 == 0, coord_multiplier=1.0)
        assert not nonfinite and step.fallbacks == 0
        pb = step.pad(b)
        assert pb.num_nodes % 16 == 0 and pb.num_nodes > b.num_nodes
        keys.add(pb.num_nodes)
    assert len(keys) >= 3 and sum(step.buckets.values()) == 6


def test_overflow_is_detected_and_the_step_falls_back_to_eager():
    b = random_batch(10, 7)
    model = tiny_model(b, overrides=ENC)
    step = StaticStep(model, atom_multiple=16, max_degree=3)  # the in-degree reaches 8 and more
    assert bool(step.losses(b, True, 1.0)["overflow"])
    eager_losses = []
    hook = model.register_forward_hook(lambda m, i, o: eager_losses.append(o["loss"]))  # the eager forward only
    out, nonfinite = step(b, teacher_forcing=True, coord_multiplier=1.0)
    hook.remove()
    assert step.fallbacks == 1 and not nonfinite and len(eager_losses) == 1 and out["loss"] is eager_losses[0]
    sizes = static_sizes(80, 8, 6)
    assert sizes.num_edges % 64 == 0 and sizes.num_edges >= 1.1 * 80 * 8 and sizes.max_degree == 16


def _failing_compile(record, fail_options):
    """A stand-in for StaticStep._compile whose compiled functions raise a compile error for the
    option sets in ``fail_options`` (None = the reduce-overhead compile) and run eagerly otherwise."""
    from torch._dynamo.exc import BackendCompilerFailed

    def fake(self, options):
        record.append(options)
        if options in fail_options:
            def fn(*tensors):
                raise BackendCompilerFailed(None, RuntimeError("PassManager::run failed"), None)
            return fn
        return self._flat
    return fake


def test_a_failed_compile_is_retried_without_persistent_reductions(monkeypatch):
    from dpcdvae.training.static_step import COMPILE_RETRIES

    b = random_batch(6, 3)
    model = tiny_model(b)
    record = []
    monkeypatch.setattr(StaticStep, "_compile", _failing_compile(record, [None]))
    step = StaticStep(model, atom_multiple=16, cuda_graphs=True)
    with pytest.warns(RuntimeWarning, match="compiling again"):
        out, nonfinite = step(b, teacher_forcing=True, coord_multiplier=1.0)
    assert record == [None, COMPILE_RETRIES[0]] and len(step.compile_failures) == 1
    assert "PassManager::run failed" in step.compile_failures[0]
    assert not nonfinite and torch.isfinite(out["loss"]) and step.fallbacks == 0
    out2, _ = step(b, teacher_forcing=False, coord_multiplier=1.0)  # the retried compile stays
    assert record == [None, COMPILE_RETRIES[0]] and torch.isfinite(out2["loss"])
    s = step.summary()  # what train_summary.json records
    assert s["cuda_graphs"] and not s["eager_after_compile_failures"] and sum(s["buckets"].values()) == 2
    assert len(s["compile_failures"]) == 1 and s["fallbacks"] == 0


def test_when_every_compile_fails_training_goes_on_with_the_eager_step(monkeypatch):
    from dpcdvae.training.static_step import COMPILE_RETRIES

    b = random_batch(6, 4)
    model = tiny_model(b)
    monkeypatch.setattr(StaticStep, "_compile", _failing_compile([], [None, *COMPILE_RETRIES]))
    step = StaticStep(model, atom_multiple=16, cuda_graphs=True)
    eager_losses = []
    hook = model.register_forward_hook(lambda m, i, o: eager_losses.append(o["loss"]))
    with pytest.warns(RuntimeWarning, match="eager step"):
        out, nonfinite = step(b, teacher_forcing=True, coord_multiplier=1.0)
    out2, _ = step(b, teacher_forcing=True, coord_multiplier=1.0)
    hook.remove()
    assert len(step.compile_failures) == 1 + len(COMPILE_RETRIES) and step._fn is None
    assert len(eager_losses) == 2 and out["loss"] is eager_losses[0] and out2["loss"] is eager_losses[1]
    assert not nonfinite
    s = step.summary()
    assert s["eager_after_compile_failures"] and s["buckets"] == {} and len(s["compile_failures"]) == 2


def test_an_error_that_is_not_a_compile_error_is_raised(monkeypatch):
    b = random_batch(4, 5)
    step = StaticStep(tiny_model(b), atom_multiple=16, cuda_graphs=True)
    monkeypatch.setattr(step, "_fn", lambda *t: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        step(b, teacher_forcing=True, coord_multiplier=1.0)


class _OpRecorder:
    """A dispatch mode that records the names of the ATen ops it sees."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Recorder(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.ops = set()

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops.add(func.name())
                return func(*args, **(kwargs or {}))

        return Recorder()


def test_the_padded_step_has_no_data_dependent_op_and_no_host_read():
    """Under FakeTensorMode every op whose output size depends on tensor values (nonzero, masked
    indexing, unique, bincount) raises; the padded forward and backward run through it and read no
    tensor value on the host (no ``_local_scalar_dense``: .item(), bool(), .tolist(), one_hot's range
    check) nor copy Python data to a tensor (``lift_fresh``: torch.tensor(list)); the eager forward does."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode

    b = random_batch(6, 8)
    model = tiny_model(b, "dime+na+gine")
    pb = pad_batch(b, atom_bucket(b.num_nodes, 16))
    noise = draw_step_noise(model, pb.num_graphs, pb.num_nodes, "cpu")
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = static_forward(model, pb, noise, False, 1.0)
        out["loss"].backward()
    with pytest.raises((DynamicOutputShapeException, DataDependentOutputException)), \
            FakeTensorMode(allow_non_fake_inputs=True):
        model(b)
    host_reads = {"aten::_local_scalar_dense", "aten::lift_fresh"}
    mult = torch.tensor(2.0)
    with _OpRecorder() as rec:
        out = static_forward(model, pb, noise, True, mult)
        out["loss"].backward()
    assert not rec.ops & host_reads and any(op.startswith("aten::sort") for op in rec.ops)  # the recorder saw it
    with _OpRecorder() as rec:
        model(b)
    assert "aten::_local_scalar_dense" in rec.ops


def test_one_bucket_holds_nearly_every_batch():
    """train.static_atom_sigmas: the one N_pad holds every one of 2,000 random batches at 4 sd (and about
    half of them at 0 sd); it is a multiple of 64 above the largest crystal; bad arguments are refused."""
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 21, (5000,), generator=g)
    totals = torch.stack([counts[torch.randperm(5000, generator=g)[:256]].sum() for _ in range(2000)])
    fixed = one_bucket_atoms(counts, 256, 4.0)
    assert fixed % 64 == 0 and int(totals.max()) < fixed < 256 * 20
    assert bool((totals < fixed).all())
    at_mean = one_bucket_atoms(counts, 256, 0.0, round_to=1)
    assert 0.4 < float((totals < at_mean).float().mean()) < 0.6
    assert one_bucket_atoms(torch.full((10,), 5), 4, 4.0, round_to=1) == 21  # no spread: 20 atoms + 1 sink
    assert one_bucket_atoms(torch.tensor([3, 40]), 1, 0.0, round_to=1) == 41  # the largest crystal fits
    for bad in ((torch.tensor([], dtype=torch.long), 4, 4.0), (counts, 0, 4.0), (counts, 4, -1.0)):
        with pytest.raises(ValueError, match="one_bucket_atoms needs"):
            one_bucket_atoms(*bad)


def test_fixed_bucket_pads_smaller_batches_to_it_and_larger_ones_by_multiples():
    model = tiny_model(random_batch(4, 0))
    small, large = random_batch(3, 1), random_batch(12, 2)
    step = StaticStep(model, atom_multiple=16, fixed_atoms=large.num_nodes - 5)
    assert step.pad(small).num_nodes == large.num_nodes - 5
    assert step.pad(large).num_nodes == atom_bucket(large.num_nodes, 16)
    out, nonfinite = step(small, teacher_forcing=False, coord_multiplier=1.0)
    assert not nonfinite and step.summary()["fixed_atoms"] == large.num_nodes - 5
    with pytest.raises(ValueError, match="fixed atom bucket"):
        StaticStep(model, fixed_atoms=1)


def test_config_keys_and_the_lightning_step():
    from dpcdvae.training.lightning import DPCDVAEModule
    from dpcdvae.training.train import check_train_config

    cfg = load_config("tiny")
    assert not cfg["train"].get("static_shapes") and not cfg["train"].get("cuda_graphs")
    with pytest.raises(ValueError, match="cuda_graphs needs train.static_shapes"):
        check_train_config(apply_overrides(cfg, ["train.cuda_graphs=true"])["train"])
    with pytest.raises(ValueError, match="static_edge_factor"):
        check_train_config(apply_overrides(cfg, ["train.static_edge_factor=3.0"])["train"])
    cfg = apply_overrides(cfg, ["train.static_shapes=true", "train.static_atom_multiple=32"])
    check_train_config(cfg["train"])
    b = random_batch(6, 9)
    module = DPCDVAEModule(tiny_model(b), cfg)
    assert module.static_step is not None and module.static_step.atom_multiple == 32
    loss = module.training_step(b, 0)
    assert bool(torch.isfinite(loss)) and sum(module.static_step.buckets.values()) == 1
    assert DPCDVAEModule(tiny_model(b), load_config("tiny")).static_step is None


def test_the_padded_step_traces_as_one_graph():
    """torch.compile(fullgraph=True) raises on any graph break (a host read, a data-dependent shape):
    the step that train.cuda_graphs compiles traces as one graph (dynamo only, backend "eager" on the
    CPU); with the teacher-forcing flag on the device it gives the losses of the Python-bool form."""
    from dpcdvae.training.static_step import _FIELDS, _NOISE

    b = random_batch(5, 11)
    model = tiny_model(b, overrides=ENC)
    step = StaticStep(model, atom_multiple=16)
    pb = step.pad(b)
    noise = draw_step_noise(model, pb.num_graphs, pb.num_nodes, "cpu", torch.Generator().manual_seed(0))
    fn = torch.compile(step._flat, backend="eager", fullgraph=True, dynamic=False)
    args = [getattr(pb, f) for f in _FIELDS] + [getattr(noise, f) for f in _NOISE]
    out = fn(*args, torch.tensor(False), torch.tensor(2.0))
    ref = static_forward(model, pb, noise, False, 2.0)
    for key in LOSS_KEYS + ("loss",):
        torch.testing.assert_close(out[key], ref[key], msg=key)


def test_fourier_features_keep_their_values():
    """fourier_features builds its frequencies on the device now (no host-to-device copy, which syncs);
    the features are bit for bit those of the former host-built table."""
    import math

    from dpcdvae.nn.embeddings import fourier_features

    f = torch.randn(64, 3) * 3
    mult = torch.tensor([2.0**q for q in range(3, 9)])
    phase = f.unsqueeze(1) * mult.view(1, -1, 1)
    args = (2.0 * math.pi) * (phase - torch.floor(phase)).reshape(64, -1)
    assert torch.equal(fourier_features(f, 3, 8), torch.cat([torch.sin(args), torch.cos(args)], dim=-1))


def test_padded_graph_integers_fit_int32_at_ten_thousand_atoms():
    """Compiled kernels take integer scalars as int32: no integer the padded graph computes may leave
    the int32 range at the atom counts of a large batch (perov_5 at batch 2048: N_pad = 10,496). The old
    sort key target * 2 N K + slot reached 4.4e9 there and the compile failed."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Int32Check(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.worst = (0, "")

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.numel():
                    m = int(t.abs().max())
                    if m > self.worst[0]:
                        self.worst = (m, func.name())
            return out

    b = random_batch(2600, 5)
    k, cutoff = 20, 5.0
    pb = pad_batch(b, atom_bucket(b.num_nodes, 256))
    assert pb.num_nodes * 2 * pb.num_nodes * k > 2**31  # the size at which the old key overflowed
    lattice = lattice_from_params(pb.lengths, pb.angles)
    with Int32Check() as check:
        sg = radius_graph_static(pb.frac_coords, lattice, pb.num_atoms, pb.batch, pb.atom_mask, cutoff, k,
                                 static_sizes(pb.num_nodes, k, 6))
        dimenet_triplets_static(sg)
    assert not bool(sg.overflow)
    assert check.worst[0] < 2**31, check.worst


def test_train_summary_records_the_static_step(prepared_cache, tmp_path):
    """`dpcdvae train` with train.static_shapes writes what the padded step did into train_summary.json
    (buckets, fallbacks, compile failures), so a run that silently fell back to eager can be seen."""
    import json

    from dpcdvae.training.train import train

    res = train(config="tiny", out=tmp_path / "run", cache_dir=prepared_cache, limit=64, progress=False,
                overrides=["train.static_shapes=true", "train.static_atom_multiple=64", "train.max_epochs=1",
                           "train.static_atom_sigmas=4"])
    saved = json.loads((tmp_path / "run" / "train_summary.json").read_text())["static_step"]
    assert saved == res.static_step and saved["fallbacks"] == 0 and not saved["cuda_graphs"]
    assert sum(saved["buckets"].values()) == res.global_step > 0 and saved["compile_failures"] == []
    # static_atom_sigmas: every batch (one batch size, drop_last) took the one fixed bucket
    assert saved["fixed_atoms"] % 64 == 0 and list(saved["buckets"]) == [str(saved["fixed_atoms"])]
