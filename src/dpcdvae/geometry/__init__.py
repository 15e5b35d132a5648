"""dpcdvae.geometry"""
