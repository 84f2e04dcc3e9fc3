"""SAM-family models in our own PyTorch code: encoders, prompt encoder, mask decoder, registry, checkpoints."""
