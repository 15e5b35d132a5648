"""dpcdvae.nn"""
