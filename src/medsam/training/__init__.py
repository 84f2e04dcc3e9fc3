"""Fine-tuning: datasets, prompt simulation, losses and the training loop."""
