"""dpcdvae: DP-CDVAE crystal generation and the CDVAE evaluation suite.

Subpackages:
    geometry    lattice conversions, periodic radius graphs, triplets (plain torch)
    data        CSV -> tensor cache preprocessing, batches, loaders
    nn          networks: periodic DimeNet++ / GINE encoders, GemNet-T denoiser
    diffusion   coordinate processes: DDPM (Eq. 6 / Eq. 7 / respaced) and CDVAE's score + Langevin
    models      the DP-CDVAE model and its thin Lightning training shell
    sampling    generation / reconstruction drivers and writers (CIF, extxyz)
    evaluation  reconstruction and generation metrics (pymatgen, matminer, smact)
"""

__version__ = "0.1.0"
