"""IoU-Net model, datasets, box jitter sampler, training loop and checkpoints."""
