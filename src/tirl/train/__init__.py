"""Training loops (SFT and RL), composed from the layers above; checkpoints and metrics logging."""
