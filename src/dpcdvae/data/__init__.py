"""dpcdvae.data"""
