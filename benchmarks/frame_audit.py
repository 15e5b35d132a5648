"""Frame audit of the DDPM denoiser input: training frame vs the frame the sampler feeds (issue 9, 3(a)). Not a test.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/frame_audit.py --ckpt runs/p5/model.pt --cache-dir .cache \\
        -n 200 --t 5 50 150 300 --device cpu --out frame_audit.json

Setting. For the first ``n`` crystals of the model's test split: z ~ q(z | x) (mu + sigma * xi, as
``dpcdvae reconstruct``), the ground-truth lattice (teacher forcing, as the training loss) and the
ground-truth atom types (the clean types; training feeds types noised at an independent level s, the
same for every frame compared here). For every level t of ``--t`` the clean coordinates are noised
with the function the training loss uses, ``ddpm.q_sample(schedule, frac0, t, batch,
recenter=process.recenter)`` (the call inside ``DDPMProcess.noise``, at a fixed t instead of a drawn
one), giving the training input ``x_t = sqrt(abar) (x0 - mean x0) + sqrt(1 - abar) eps`` (not
wrapped, mean-free per crystal) and the target ``eps`` (mean-free). The eps MSE is the training
coordinate loss: per crystal the mean over atoms of ||eps_hat - eps||^2, ``DDPMProcess.loss``
(checked to agree), averaged over crystals.

Why one target serves every frame. The denoiser is a function of the coordinates modulo 1 per atom:
the graph is built from ``wrap(x)`` and the Fourier features have integer frequencies (the script
checks this: ``periodicity_max_abs_diff`` is eps_hat(x_t + k) - eps_hat(x_t) for random integer k per
atom). So two inputs ``u`` and ``x_t`` with ``u - x_t = k_i + c`` (integers k_i per atom, one vector
c per crystal) are the same noisy crystal translated by c; the noise that produced it is the same
eps (a translation moves x0, not eps), so eps is the target in every frame, and any MSE difference
is the network's dependence on the absolute position (Fourier features of absolute fractional
coordinates), i.e. on the frame. The per-atom integers k_i only matter to the reverse-step arithmetic
(x0_hat = (w - sqrt(1 - abar) eps_hat) / sqrt(abar)), which is not scored here.

Frames compared (each fed to the same network with the same z, lattice, types, t, target eps):

- ``train``: x_t itself, exactly what training feeds.
- ``sampler``: P(x_t), with P the sampler's own post-processing of a state before a network call,
  taken from ``ddpm.reverse_sample`` itself (the input its first ``eps_fn`` call receives, with the
  process's ``recenter``; today P(x) = remove_crystal_mean(wrap(x))). This is the input the reverse
  step at level t gets when the state it post-processes is in the training frame.
- ``sampler_x2``: P(P(x_t)), the input of the following step in the low-t limit (the state barely
  moves between steps, so the next step post-processes ~P(x_t) again).
- ``fmod`` (a candidate sampler post-processing, NOT the package's): remove_crystal_mean(fmod(x, 1)),
  fmod(x, 1) = x - trunc(x) in (-1, 1). It leaves a recentred state whose atoms lie in (-1, 1)
  unchanged (so it is idempotent there, and the identity on the training x_t while the noise keeps
  |x_t| < 1).
- ``random_translation``: x_t + u_b, u_b ~ U[0, 1)^3 per crystal, a baseline for how much an
  arbitrary translation costs.

The frame jump of a post-processing Q applied to a state ``y`` whose previous network input was
``w_prev`` is the common translation (mod 1) between Q(y) and the continuation of w_prev, with the
step's own drift of the crystal mean (recentring is meant to remove it) taken out:
``jump = frac(Q(y) - y + mean(y - w_prev))``, frac(d) = d - round(d); it is checked to be one vector per
crystal (``max_jump_spread``), and a crystal flips when any component exceeds 1e-4 (jumps are
multiples of 1/N_atoms). Reported per t, as fractions of crystals:

- ``flip_vs_train``: Q(x_t) vs x_t (y = w_prev = x_t): a reverse step's input frame differs from the
  training frame;
- ``flip_consecutive_lowt``: Q(Q(x_t)) vs Q(x_t) (y = w_prev = Q(x_t)): consecutive inputs differ in
  the low-t limit (Q not idempotent);
- ``flip_x2_vs_train``: Q(Q(x_t)) vs x_t (0 with flip_vs_train 1 = the alternating pattern);
- ``flip_after_real_step`` (sampler and fmod only): one real reverse step from w = Q(x_t) with the
  network's eps_hat, the registered sampler step (``--sampler``, coefficients of level t in the full
  plan) and mean-free noise as ``reverse_sample`` draws it, giving the next state x'; then Q(x') vs w.
Also for ``recentre_then_wrap`` (wrap(remove_crystal_mean(x)), the order swapped; no network call: its
input is the training input modulo 1, so its MSE equals ``train``) to show whether the swap alone
makes the post-processing idempotent.

``mse`` per frame, ``ratio_vs_train`` (mean MSE / mean train MSE over all crystals and repeats),
``ratio_on_flipped`` (the same over the crystals whose frame jumped only) and the paired difference
with its standard error.
"""

from __future__ import annotations

import argparse
import time

import torch

from dpcdvae.data.cache import load_split
from dpcdvae.diffusion import ddpm
from dpcdvae.diffusion.process import NoisyBatch
from dpcdvae.diffusion.respace import make_plan
from dpcdvae.geometry.lattice import lattice_from_params
from dpcdvae.jsonio import dumps_strict, write_json
from dpcdvae.models.checkpoint import load_model
from dpcdvae.registry import SAMPLERS as SAMPLER_REGISTRY
from dpcdvae.sampling.run import inference_context, inference_precision, resolve_device

TOL = 1e-4


class _Captured(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="model file, shard folder or Lightning checkpoint")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--t", type=int, nargs="+", default=[5, 50, 150, 300])
    ap.add_argument("--repeats", type=int, default=4, help="independent eps (and translation) draws per t, same z")
    ap.add_argument("--sampler", default="eq7", help="step used for flip_after_real_step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    t_start = time.perf_counter()
    dev = resolve_device(args.device)
    model, cfg = load_model(args.ckpt, dev)
    prec = inference_precision(dev, args.precision, cfg)
    proc = model.process
    if proc.name != "ddpm":
        raise SystemExit(f"frame_audit needs a ddpm model, got process {proc.name}")
    schedule = proc.schedule
    data = load_split(args.cache_dir, cfg["data"]["dataset"], args.split).to(dev)
    n = min(args.n, len(data))
    cb = data.batch(torch.arange(n, device=dev))
    batch, num_atoms, B = cb.batch, cb.num_atoms, n
    lattice = lattice_from_params(cb.lengths, cb.angles)
    first_atom = torch.cumsum(num_atoms, 0) - num_atoms
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    full_plan = make_plan(schedule, None)
    plan_dev = full_plan.to(dev, torch.float32)
    step_fn = SAMPLER_REGISTRY[args.sampler]

    def seg_max(v: torch.Tensor) -> torch.Tensor:  # [N] -> [B]
        return torch.zeros(B, device=dev, dtype=v.dtype).scatter_reduce_(0, batch, v, "amax", include_self=True)

    def per_crystal_mse(pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        err = ((pred.float() - eps) ** 2).sum(-1, keepdim=True)
        return ddpm.crystal_mean(err, batch, B).squeeze(1)

    def sampler_input(x: torch.Tensor) -> torch.Tensor:
        """The input the sampler's first network call gets for state x (reverse_sample's own post-processing)."""
        box: dict = {}

        def eps_fn(w, t, i):
            box["w"] = w.clone()
            raise _Captured

        try:
            ddpm.reverse_sample(eps_fn, x, batch, num_atoms, schedule, sampler=args.sampler, plan=full_plan,
                                recenter=proc.recenter)
        except _Captured:
            pass
        return box["w"]

    def fmod_pp(x):  # candidate: recentre a (-1, 1) lift; identity on recentred states inside (-1, 1)
        w = torch.fmod(x, 1.0)
        return ddpm.remove_crystal_mean(w, batch, B) if proc.recenter else w

    def recentre_then_wrap(x):  # the order swapped (not a network input frame change: same torus class)
        return ddpm.wrap(ddpm.remove_crystal_mean(x, batch, B) if proc.recenter else x)

    post = {"sampler": sampler_input, "fmod": fmod_pp, "recentre_then_wrap": recentre_then_wrap}

    def jump(q_y, y, w_prev):
        """Per crystal: (flipped [B] bool, |jump| max over dims [B], spread [B], jump*N [B,3])."""
        d = q_y - y + ddpm.crystal_mean(y - w_prev, batch, B)[batch]
        f = d - torch.round(d)
        j0 = f[first_atom]  # [B, 3]
        dev_ = f - j0[batch]
        dev_ = (dev_ - torch.round(dev_)).abs().amax(-1)
        mag = j0.abs().amax(-1)
        return mag > TOL, mag, seg_max(dev_), j0 * num_atoms.unsqueeze(1)

    with torch.no_grad(), inference_context(dev, prec):
        mu, logvar = model.encode_stats(cb)
        z = mu + torch.randn(mu.shape, device=dev, generator=gen) * torch.exp(0.5 * logvar)

        def net(x, t_vec):
            pred, _ = model.denoiser(z, t_vec, proc.num_levels, x, cb.atom_types, num_atoms, batch, lattice)
            return pred.float()

        report: dict = {"ckpt": args.ckpt, "dataset": cfg["data"]["dataset"], "split": args.split, "n": n,
                        "t": args.t, "repeats": args.repeats, "seed": args.seed, "precision": prec,
                        "device": str(dev), "threads": torch.get_num_threads(), "recenter": proc.recenter,
                        "sampler": args.sampler, "eps_frame": model.denoiser.eps_frame,
                        "fourier": model.denoiser.fourier, "tol": TOL, "per_t": {}}
        periodic_checked = False
        for t in args.t:
            if not 1 <= t < proc.num_levels:
                raise SystemExit(f"--t {t} outside 1..{proc.num_levels - 1}")
            t0 = time.perf_counter()
            t_vec = torch.full((B,), t, dtype=torch.long, device=dev)
            i_plan = full_plan.timesteps.index(t)
            frames = ("train", "sampler", "sampler_x2", "fmod", "random_translation")
            mse = {k: [] for k in frames}
            flips: dict = {k: {"flip_vs_train": [], "flip_consecutive_lowt": [], "flip_x2_vs_train": []} for k in post}
            for k in ("sampler", "fmod"):
                flips[k]["flip_after_real_step"] = []
            spread_max = 0.0
            jump_units: list = []
            loss_check = 0.0
            xt_absmax = 0.0
            for _ in range(args.repeats):
                x_t, eps = ddpm.q_sample(schedule, cb.frac_coords, t_vec, batch, recenter=proc.recenter, generator=gen)
                xt_absmax = max(xt_absmax, float(x_t.abs().max()))
                inputs = {"train": x_t, "sampler": sampler_input(x_t)}
                inputs["sampler_x2"] = sampler_input(inputs["sampler"])
                inputs["fmod"] = fmod_pp(x_t)
                shift = torch.rand((B, 3), device=dev, generator=gen)
                inputs["random_translation"] = x_t + shift[batch]
                preds = {k: net(v, t_vec) for k, v in inputs.items()}
                for k in frames:
                    mse[k].append(per_crystal_mse(preds[k], eps))
                noisy = NoisyBatch(x=x_t, t=t_vec, target=eps, weights=torch.ones(B, device=dev),
                                   types=cb.atom_types, type_sigma=torch.ones_like(batch, dtype=torch.float32))
                loss_check = max(loss_check, abs(float(proc.loss(preds["train"], noisy, batch, B))
                                                 - float(mse["train"][-1].mean())))
                if not periodic_checked:
                    k_int = torch.randint(-3, 4, x_t.shape, device=dev, generator=gen).to(x_t.dtype)
                    report["periodicity_max_abs_diff"] = float((net(x_t + k_int, t_vec) - preds["train"]).abs().max())
                    report["eps_abs_mean"] = float(preds["train"].abs().mean())
                    periodic_checked = True
                for k, q in post.items():
                    q1 = q(x_t)
                    q2 = q(q1)
                    f1, _, s1, u1 = jump(q1, x_t, x_t)
                    f2, _, s2, _ = jump(q2, q1, q1)
                    f3, _, s3, _ = jump(q2, x_t, x_t)
                    flips[k]["flip_vs_train"].append(f1)
                    flips[k]["flip_consecutive_lowt"].append(f2)
                    flips[k]["flip_x2_vs_train"].append(f3)
                    spread_max = max(spread_max, float(torch.stack([s1, s2, s3]).max()))
                    if k == "sampler":
                        jump_units.append(u1[f1])
                    if k in ("sampler", "fmod"):
                        w = inputs[k]
                        noise = ddpm.remove_crystal_mean(torch.randn(w.shape, device=dev, generator=gen), batch, B) \
                            if proc.recenter else torch.randn(w.shape, device=dev, generator=gen)
                        x_next = step_fn(w, preds[k], plan_dev, i_plan, noise)
                        fr, _, sr, _ = jump(q(x_next), x_next, w)
                        flips[k]["flip_after_real_step"].append(fr)
                        spread_max = max(spread_max, float(sr.max()))
            m = {k: torch.cat(v) for k, v in mse.items()}
            flipped = torch.cat(flips["sampler"]["flip_vs_train"])
            flipped_x2 = torch.cat(flips["sampler"]["flip_x2_vs_train"])
            flipped_fmod = torch.cat(flips["fmod"]["flip_vs_train"])
            base = m["train"]
            res: dict = {"sqrt_abar": float(schedule.sqrt_alpha_bars[t]),
                         "sqrt_one_minus_abar": float(schedule.sqrt_one_minus_alpha_bars[t]),
                         "x_t_abs_max": xt_absmax, "mse": {}, "frames": {}}
            for k in frames:
                d = m[k] - base
                sel = {"sampler": flipped, "sampler_x2": flipped_x2, "fmod": flipped_fmod}.get(k)
                res["mse"][k] = {
                    "mean": float(m[k].mean()),
                    "ratio_vs_train": float(m[k].mean() / base.mean()),
                    "paired_diff": float(d.mean()),
                    "paired_diff_se": float(d.std() / d.numel() ** 0.5) if d.numel() > 1 else None,
                    "ratio_on_flipped": (float(m[k][sel].mean() / base[sel].mean()) if sel is not None
                                         and bool(sel.any()) else None),
                    "n_flipped": int(sel.sum()) if sel is not None else None,
                    "ratio_on_unflipped": (float(m[k][~sel].mean() / base[~sel].mean()) if sel is not None
                                           and bool((~sel).any()) else None),
                }
            for k, fl in flips.items():
                res["frames"][k] = {name: float(torch.cat(v).float().mean()) for name, v in fl.items()}
            ju = torch.cat(jump_units) if jump_units else torch.zeros(0, 3)
            res["sampler_jump_in_units_of_1_over_N"] = {
                "abs_max_component_quantiles_50_90": [float(q) for q in ju.abs().amax(-1).quantile(
                    torch.tensor([0.5, 0.9]))] if ju.numel() else None,
            }
            res["max_jump_spread"] = spread_max
            res["loss_check_abs_diff"] = loss_check
            res["seconds"] = time.perf_counter() - t0
            report["per_t"][str(t)] = res
            fr = res["frames"]
            print(f"t={t:4d}  mse train {res['mse']['train']['mean']:.4g}  ratio sampler "
                  f"{res['mse']['sampler']['ratio_vs_train']:.3f} (flipped {res['mse']['sampler']['ratio_on_flipped']})"
                  f"  sampler_x2 {res['mse']['sampler_x2']['ratio_vs_train']:.3f}  fmod {res['mse']['fmod']['ratio_vs_train']:.3f}"
                  f"  rand-transl {res['mse']['random_translation']['ratio_vs_train']:.3f} | flips sampler "
                  f"{fr['sampler']} | fmod {fr['fmod']} | r-then-w {fr['recentre_then_wrap']}  ({res['seconds']:.1f} s)",
                  flush=True)
    report["seconds"] = time.perf_counter() - t_start
    print(dumps_strict(report, indent=2))
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
