"""dpcdvae.diffusion"""
