"""Audit of the reverse chain on reconstructions (issue: composition changes, close atoms). Not a test.

    python benchmarks/chain_audit.py --ckpt runs/p5/model.pt --cache-dir .cache -n 1000 --out audit.json

Encodes the first ``n`` crystals of the test split (z ~ q(z|x), as ``dpcdvae reconstruct``), runs the
reverse chain (Eq. 7 by default, full length) and records along it:

- composition: how often the multiset of atom types of a crystal changes between consecutive steps
  (the types are re-set from the denoiser's argmax at every step), the step of the last change, and
  the exact-composition rate of the initial types (A_z count scheme), of the final types, and of the
  ground truth's (per crystal, the sorted type multisets are compared);
- close atoms: the smallest periodic interatomic distance of every final crystal (27 images), the
  fraction below 0.5 Å, for those whether the pair has one element, and the first step (checked every
  ``--every`` steps) from which the pair stays closer than 0.5 Å.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from dpcdvae.data.cache import load_split
from dpcdvae.geometry.lattice import lattice_from_params, wrap
from dpcdvae.jsonio import dumps_strict, write_json
from dpcdvae.models.checkpoint import load_model
from dpcdvae.sampling.run import inference_context, inference_precision, resolve_device


def min_pair_distance(frac: torch.Tensor, lattice: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crystal: smallest periodic distance (Å) over distinct atom pairs, and the pair [B, 2]
    (local indices). Crystals with one atom get +inf."""
    shifts = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=frac.dtype, device=frac.device)
    out_d, out_p = [], []
    for f, lat, n in zip(frac.split(counts), lattice, counts):
        if n < 2:
            out_d.append(torch.tensor(float("inf"), device=frac.device))
            out_p.append(torch.zeros(2, dtype=torch.long, device=frac.device))
            continue
        d = f[:, None, None, :] - f[None, :, None, :] + shifts[None, None]  # [n, n, 27, 3]
        cart = d @ lat
        dist = cart.norm(dim=-1).min(-1).values
        dist = dist + torch.eye(n, device=frac.device) * 1e9
        k = int(dist.argmin())
        out_d.append(dist.flatten()[k])
        out_p.append(torch.tensor([k // n, k % n], device=frac.device))
    return torch.stack(out_d), torch.stack(out_p)


def compositions(types: torch.Tensor, counts: list[int]) -> list[tuple[int, ...]]:
    return [tuple(sorted(t.tolist())) for t in types.split(counts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--sampler", default="eq7")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--every", type=int, default=10, help="check distances every this many steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    dev = resolve_device(args.device)
    model, cfg = load_model(args.ckpt, dev)
    prec = inference_precision(dev, args.precision, cfg)
    data = load_split(args.cache_dir, cfg["data"]["dataset"], args.split).to(dev)
    n = min(args.n, len(data))
    batch = data.batch(torch.arange(n, device=dev))
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    t0 = time.perf_counter()
    rec: dict = {"prev": None, "changes": torch.zeros(n, dtype=torch.long), "last_change": torch.full((n,), -1),
                 "initial": None, "snap": []}
    counts: list[int] = []

    def callback(i: int, t: int, x: torch.Tensor, types: torch.Tensor) -> None:
        comp = compositions(types.cpu(), counts)
        if rec["prev"] is None:
            rec["initial_after_first"] = comp
        else:
            for b, (a, c) in enumerate(zip(rec["prev"], comp)):
                if a != c:
                    rec["changes"][b] += 1
                    rec["last_change"][b] = i
        rec["prev"] = comp
        if i % args.every == 0:
            rec["snap"].append((i, wrap(x).detach()))

    with inference_context(dev, prec):
        mu, logvar = model.encode_stats(batch)
        z = mu + torch.randn(mu.shape, device=dev, generator=gen) * torch.exp(0.5 * logvar)
        num_atoms = model.predict_num_atoms(z).float().argmax(-1).clamp(min=1)
        counts = num_atoms.tolist()
        res = model.decode(z, sampler=args.sampler, steps=args.steps, generator=gen, callback=callback,
                           return_initial_types=True)
    seconds = time.perf_counter() - t0

    gt = compositions(batch.atom_types.cpu(), batch.num_atoms.tolist())
    final = compositions(res["atom_types"].cpu(), counts)
    first = rec["initial_after_first"]
    initial = compositions(res["initial_types"].cpu(), counts)
    lattice = lattice_from_params(res["lengths"], res["angles"])
    dmin, pair = min_pair_distance(res["frac_coords"].float(), lattice.float(), counts)
    close = (dmin < 0.5).cpu()
    types_split = res["atom_types"].cpu().split(counts)
    same = [bool(types_split[b][pair[b, 0]] == types_split[b][pair[b, 1]]) for b in range(n) if close[b]]
    # first step from which each close pair stays < 0.5 Å
    onset = []
    for b in [int(i) for i in torch.nonzero(close).flatten()]:
        start = int(sum(counts[:b]))
        ia, ib = start + int(pair[b, 0]), start + int(pair[b, 1])
        first_close = None
        for step, xs in rec["snap"]:
            d, _ = min_pair_distance(xs[[ia, ib]].float(), lattice[b:b + 1].float(), [2])
            if float(d[0]) < 0.5:
                first_close = step if first_close is None else first_close
            else:
                first_close = None
        onset.append(first_close)
    steps_run = len(rec["snap"]) * args.every
    report = {
        "ckpt": args.ckpt, "n": n, "sampler": args.sampler, "steps": args.steps, "precision": prec,
        "seconds": seconds, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "composition": {
            "exact_initial_from_A_z": sum(a == g for a, g in zip(initial, gt)) / n,
            "exact_after_first_step": sum(a == g for a, g in zip(first, gt)) / n,
            "exact_final": sum(a == g for a, g in zip(final, gt)) / n,
            "crystals_with_any_change": float((rec["changes"] > 0).float().mean()),
            "mean_changes_per_crystal": float(rec["changes"].float().mean()),
            "max_changes": int(rec["changes"].max()),
            "last_change_step_quantiles": [float(q) for q in torch.quantile(
                rec["last_change"][rec["last_change"] >= 0].float(), torch.tensor([0.5, 0.9, 0.99]))]
            if bool((rec["last_change"] >= 0).any()) else None,
        },
        "close_atoms": {
            "fraction_min_dist_below_0.5": float(close.float().mean()),
            "n_close": int(close.sum()),
            "fraction_close_pairs_same_element": (sum(same) / len(same)) if same else None,
            "onset_step_quantiles": [float(q) for q in torch.tensor([o for o in onset if o is not None],
                                                                    dtype=torch.float).quantile(
                torch.tensor([0.1, 0.5, 0.9]))] if any(o is not None for o in onset) else None,
            "steps_in_chain": steps_run,
            "min_dist_quantiles": [float(q) for q in dmin.cpu().quantile(torch.tensor([0.01, 0.05, 0.1, 0.5]))],
        },
    }
    print(dumps_strict(report, indent=2))
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
