"""Markdown + PNG reports of ``evaluate gen`` / ``evaluate recon`` (matplotlib, no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dpcdvae.atomic import atomic_savefig, atomic_write_text


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _hist(ax, gen: np.ndarray, gt: np.ndarray, title: str, integer: bool = False, labels=("generated", "test")) -> None:
    gen = np.asarray(gen, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    gen, gt = gen[np.isfinite(gen)], gt[np.isfinite(gt)]
    both = np.concatenate([gen, gt])
    if both.size == 0:
        ax.set_title(f"{title} (no data)")
        return
    if integer:
        bins = np.arange(np.floor(both.min()) - 0.5, np.ceil(both.max()) + 1.5)
    else:
        lo, hi = np.percentile(both, [0.5, 99.5])
        if hi - lo < 1e-6 * max(1.0, abs(lo)):
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 50)
    for data, name, color in ((gt, labels[1], "tab:gray"), (gen, labels[0], "tab:blue")):
        if data.size:
            ax.hist(np.clip(data, bins[0], bins[-1]), bins=bins, density=True, alpha=0.55, label=f"{name} (n={data.size})",
                    color=color)
    ax.set_title(title)
    ax.set_xlabel(title)
    ax.set_ylabel("fraction of crystals per bin" if integer else "probability density")
    ax.legend(fontsize=8)


def _save(fig, path: Path) -> str:
    atomic_savefig(path, fig, dpi=110)
    return path.name


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{100 * x:.2f} %" if pct else f"{x:.4g}"
    return str(x)


def _validity_plot(path: Path, validity: dict[str, Any]) -> str:
    fig, ax = _figure(1, 2, (5.5, 3.8))
    keys = ["comp_valid", "struct_valid", "valid"]
    vals = [100 * (validity[k] or 0.0) for k in keys]
    ax[0, 0].bar(keys, vals, color=["tab:green", "tab:orange", "tab:blue"])
    ax[0, 0].set_ylim(0, 100)
    ax[0, 0].set_ylabel("% of all crystals")
    ax[0, 0].set_title("validity")
    reasons = validity["reasons"]
    if reasons:
        names = list(reasons)[:10]
        ax[0, 1].barh(names[::-1], [reasons[n] for n in names][::-1], color="tab:red")
        ax[0, 1].set_xlabel("crystals")
        ax[0, 1].tick_params(axis="y", labelsize=7)
    ax[0, 1].set_title("reasons for invalidity")
    return _save(fig, path)


def write_gen_report(folder: Path, result: dict[str, Any], gen: dict[str, np.ndarray], gt: dict[str, np.ndarray],
                     wrows: np.ndarray, gen_prop: np.ndarray | None, gt_prop: np.ndarray | None) -> Path:
    """report.md + PNGs in ``folder``: histograms (density, property, #elements, N_a, lattice
    parameters) of all valid generated crystals vs the ground truth, and the validity breakdown."""
    folder.mkdir(parents=True, exist_ok=True)
    ok = gen["valid"]
    gt_ok = gt["constructed"]
    images = []
    fig, ax = _figure(1, 3)
    _hist(ax[0, 0], gen["density"][ok], gt["density"][gt_ok], "density (g/cm³)")
    _hist(ax[0, 1], gen["n_elems"][ok], gt["n_elems"][gt_ok], "number of elements", integer=True)
    _hist(ax[0, 2], gen["num_atoms"][ok], gt["num_atoms"][gt_ok], "atoms per cell N_a", integer=True)
    images.append(_save(fig, folder / "distributions.png"))
    fig, ax = _figure(2, 3)
    names = ["a (Å)", "b (Å)", "c (Å)", "α (°)", "β (°)", "γ (°)"]
    for k in range(6):
        key, col = ("lengths", k) if k < 3 else ("angles", k - 3)
        _hist(ax[k // 3, k % 3], gen[key][ok, col], gt[key][gt_ok, col], names[k])
    images.append(_save(fig, folder / "lattice.png"))
    if gen_prop is not None and gt_prop is not None:
        fig, ax = _figure()
        _hist(ax[0, 0], gen_prop, gt_prop, "predicted property (formation energy, eV/atom)")
        images.append(_save(fig, folder / "property.png"))
    images.append(_validity_plot(folder / "validity.png", result["validity"]))

    v, c, w, d = result["validity"], result["coverage"], result["wdist"], result["diversity"]
    inp = result["input"]
    lines = [
        *_header(result, "Generation metrics", f"({inp['kind']}; {inp['note']}); {inp['n_scored']} crystals "
                 f"scored of {inp['n_input']}"),
        f"| validity: composition | {_fmt(v['comp_valid'], True)} |",
        f"| validity: structure | {_fmt(v['struct_valid'], True)} |",
        f"| validity: both (+ fingerprints) | {_fmt(v['valid'], True)} |",
        f"| COV-R (struct {c['struct_cutoff']}, comp {c['comp_cutoff']}) | {_fmt(c['cov_recall'], True)} |",
        f"| COV-P | {_fmt(c['cov_precision'], True)} |",
        f"| AMSD-R / AMSD-P | {_fmt(c['amsd_recall'])} / {_fmt(c['amsd_precision'])} |",
        f"| AMCD-R / AMCD-P | {_fmt(c['amcd_recall'])} / {_fmt(c['amcd_precision'])} |",
        f"| W(density) (g/cm³) | {_fmt(w['wdist_density'])} |",
        f"| W(#elements) | {_fmt(w['wdist_num_elems'])} |",
        f"| W(property) | {_fmt(w['wdist_prop'])}" + (f" ({w['reason']})" if w.get("reason") else "") + " |",
        f"| comp_div / struct_div | {_fmt(d['comp_div'])} / {_fmt(d['struct_div'])} |",
        *([f"| W(density), W(#elements): mean ± std over seeds {w['resampled_10_seeds']['seeds']} | "
           f"{_fmt(w['resampled_10_seeds']['wdist_density_mean'])} ± {_fmt(w['resampled_10_seeds']['wdist_density_std'])}, "
           f"{_fmt(w['resampled_10_seeds']['wdist_num_elems_mean'])} ± "
           f"{_fmt(w['resampled_10_seeds']['wdist_num_elems_std'])} |"] if "resampled_10_seeds" in w else []),
        "",
        f"W distances and diversities use {w['n_samples']} random valid crystals (numpy default_rng seed "
        f"{w['seed']}) against {w['n_gt']} ground-truth crystals. Composition validity uses the SMACT "
        f"`{result['settings']['oxidation_states']}` oxidation states; a missing electronegativity counts as "
        f"{result['settings']['pauling_missing_electronegativity']}.",
        "",
        "## Invalid crystals by reason",
        "",
        "| reason | crystals |",
        "| --- | --- |",
        *[f"| {k} | {n} |" for k, n in v["reasons"].items()],
        "",
        "## Plots (all valid generated crystals vs the ground truth)",
        "",
    ]
    return _write_report(folder, lines, images, result)



def _header(result: dict[str, Any], title: str, input_note: str) -> list[str]:
    """Title, input / ground-truth / date lines and the head of the metrics table."""
    gt = result["ground_truth"]
    path = result["input"]["path"]
    shown = ", ".join(f"`{p}`" for p in path) if isinstance(path, list) else f"`{path}`"  # several runs: a list
    return [
        f"# {title}: {result['dataset']}",
        "",
        f"- input: {shown} {input_note}",
        f"- ground truth: {gt['split']} split, `{gt['csv']}` ({gt['n']} crystals)",
        f"- date: {result['date']}",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]


def _write_report(folder: Path, lines: list[str], images: list[str], result: dict[str, Any]) -> Path:
    """Append the plots and timing, insert the warnings after the header, write report.md."""
    lines = [*lines, *[f"![{name}]({name})" for name in images], "", f"Timing: {result['timing']}"]
    for warn in result.get("warnings", []):
        lines.insert(5, f"- WARNING: {warn}")
    return atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")


def write_recon_report(folder: Path, result: dict[str, Any], table: dict[str, np.ndarray], rms: np.ndarray,
                       matched: np.ndarray, d_len: np.ndarray, d_ang: np.ndarray) -> Path:
    """report.md + PNGs: RMS histogram of matches, lattice errors of valid predictions, validity."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    fig, ax = _figure(1, 3)
    ax[0, 0].hist(rms[matched], bins=40, color="tab:blue")
    ax[0, 0].set_title(f"normalised RMS of matches (n={int(matched.sum())})")
    for a, data, name in ((ax[0, 1], d_len, "lengths: pred - GT (Å)"), (ax[0, 2], d_ang, "angles: pred - GT (°)")):
        flat = data.reshape(-1)
        flat = flat[np.isfinite(flat)]
        if flat.size:
            lo, hi = np.percentile(flat, [0.5, 99.5])
            a.hist(np.clip(flat, lo, hi), bins=50, color="tab:gray")
        a.set_title(name)
    images.append(_save(fig, folder / "recon_errors.png"))
    images.append(_validity_plot(folder / "validity.png", result["validity"]))
    lines = [
        *_header(result, "Reconstruction metrics", f"({result['input']['kind']}); pairing: {result['input']['pairing']}"),
        f"| match rate (over all {result['n_gt']} ground-truth crystals) | {_fmt(result['match_rate'], True)} |",
        f"| mean normalised RMS of matches | {_fmt(result['rms_dist'])} |",
        f"| RMS error of lattice lengths (Å, valid predictions) | {_fmt(result['rms_lengths'])} |",
        f"| RMS error of lattice angles (°, valid predictions) | {_fmt(result['rms_angles'])} |",
        f"| predictions valid | {_fmt(result['validity']['valid'], True)} |",
        "",
        f"StructureMatcher stol={result['settings']['stol']}, angle_tol={result['settings']['angle_tol']}, "
        f"ltol={result['settings']['ltol']}; fingerprint validity check: {result['settings']['fingerprint_validity']}.",
        "",
    ]
    return _write_report(folder, lines, images, result)
