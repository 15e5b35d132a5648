"""How much composition the posterior's width costs: the atom types drawn from A_z (the count scheme
that starts the reverse chain) with z ~ q(z|x), as the reconstruction protocol does, against z = mu, and
the per-atom cross-entropy of A_z. No reverse chain, so it runs on a CPU in seconds. Not a test.
Also: how often the N_a head is right (z = mu / z ~ q), and the distinct elements of the types drawn from
A_z with the predicted N_a for z ~ q(z|x) and for prior draws z ~ N(0, I) (generation), beside the data's.

    PYTHONPATH=src python benchmarks/posterior_composition.py --ckpt pretrained:perov_5 --cache-dir .cache -n 2000
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import torch
import torch.nn.functional as F
from chain_audit import compositions  # benchmarks/chain_audit.py (this folder is on sys.path)

from dpcdvae.data.cache import load_split
from dpcdvae.jsonio import dumps_strict
from dpcdvae.models.checkpoint import load_model
from dpcdvae.diffusion.types import sample_composition_types


def _exact(types: torch.Tensor, gt: torch.Tensor, counts: list[int]) -> float:
    """Fraction of crystals whose sorted atom types equal the ground truth's."""
    return sum(a == b for a, b in zip(compositions(types.cpu(), counts), compositions(gt.cpu(), counts))) / len(counts)


def _num_elements(types: torch.Tensor, counts: list[int]) -> float:
    """Mean number of distinct elements per crystal."""
    return sum(len(set(t.tolist())) for t in types.cpu().split(counts)) / len(counts)


def _drawn_with_predicted_na(model, z: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """Types drawn from A_z with the N_a head's atom counts (what decoding starts from)."""
    na, _, types = model.initial_atoms(z, generator=gen)
    return types, na.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="model.pt / exported folder, or pretrained:NAME")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ckpt = args.ckpt
    if ckpt.startswith("pretrained:"):
        from dpcdvae.pretrained import model_path

        ckpt = str(model_path(ckpt.split(":", 1)[1]))
    model, cfg = load_model(ckpt, torch.device("cpu"))
    data = load_split(args.cache_dir, cfg["data"]["dataset"], args.split)
    n = min(args.n, len(data))
    batch = data.batch(torch.arange(n))
    counts = batch.num_atoms.tolist()
    gen = torch.Generator().manual_seed(args.seed)
    out = {"ckpt": args.ckpt, "split": args.split, "n": n, "seed": args.seed}
    with torch.no_grad():
        mu, logvar = model.encode_stats(batch)
        out["posterior_std_mean"] = float(torch.exp(0.5 * logvar).mean())
        out["mu_norm_mean"] = float(mu.norm(dim=-1).mean())
        for name, z in (("z_sampled", mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)),
                        ("z_mu", mu)):
            logits = model.composition_logits(z, batch.batch)  # true N_a: isolates the composition
            probs = F.softmax(logits, -1)
            drawn = sample_composition_types(probs, batch.batch, batch.num_atoms, generator=gen)
            out[f"{name}_exact_comp_drawn"] = _exact(drawn, batch.atom_types, counts)
            out[f"{name}_per_atom_ce"] = float(F.cross_entropy(logits, batch.atom_types - 1))
            out[f"{name}_num_atoms_right"] = float((model.predict_num_atoms(z).argmax(-1) == batch.num_atoms)
                                                   .float().mean())
            if name == "z_sampled":
                drawn, na = _drawn_with_predicted_na(model, z, gen)
                out["z_sampled_num_elements_drawn"] = _num_elements(drawn, na)
        out["data_num_elements"] = _num_elements(batch.atom_types, counts)
        # crystals of more than one formula unit: their N_a is not a function of the reduced composition
        out["data_formula_units_above_1"] = sum(
            math.gcd(*Counter(t.tolist()).values()) > 1 for t in batch.atom_types.split(counts)) / n
        drawn, na = _drawn_with_predicted_na(model, torch.randn(n, mu.shape[1], generator=gen), gen)
        out["prior_num_elements_drawn"] = _num_elements(drawn, na)
    print(dumps_strict(out))


if __name__ == "__main__":
    main()
