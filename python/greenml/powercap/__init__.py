"""Power limits: read them, sweep them, tune them during training, always restore them."""
