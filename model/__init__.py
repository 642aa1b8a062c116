"""avmatch models: networks, losses, trainer and evaluation."""
