"""Inference: the predictor (encode once, prompt many times), embedding cache, propagation, automatic masks."""
