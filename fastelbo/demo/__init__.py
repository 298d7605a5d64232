"""`fastelbo demo`: a small VAE trained on scikit-learn's bundled 8x8 digits, fused vs reference."""
