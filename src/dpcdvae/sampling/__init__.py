"""dpcdvae.sampling"""
