"""dpcdvae.evaluation"""
