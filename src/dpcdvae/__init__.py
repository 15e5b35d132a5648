"""dpcdvae: DP-CDVAE crystal generation and the CDVAE evaluation suite.

Subpackages:
    geometry    lattice conversions, periodic radius graphs, triplets (plain torch)
    data        CSV -> tensor cache preprocessing, batches, loaders
    nn          networks: periodic DimeNet++ / GINE encoders, GemNet-T denoiser
    diffusion   coordinate processes: DDPM (Eq. 6 / Eq. 7 / respaced) and CDVAE's score + Langevin
    models      the DP-CDVAE model, its builder, the property predictor and model files (checkpoint.py)
    training    training: the thin Lightning shell, budget schedule, EMA, `dpcdvae train` / `export`
    sampling    generation / reconstruction drivers and writers (CIF, extxyz)
    evaluation  reconstruction and generation metrics (pymatgen, matminer, smact)
    pretrained  models shipped with the package: dpcdvae.load_pretrained("perov_5")
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_pretrained"]


def __getattr__(name: str):
    """Lazy exports (importing dpcdvae stays cheap: nothing heavy is imported until used)."""
    if name == "load_pretrained":
        from dpcdvae.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'dpcdvae' has no attribute {name!r}")
