"""avmatch models: networks, losses, trainer and evaluation."""

from model import cswin  # noqa: F401,E402  (registers the CSWin variants with timm)
