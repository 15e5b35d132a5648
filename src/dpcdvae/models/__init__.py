"""dpcdvae.models"""
