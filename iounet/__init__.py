"""iounet: IoU-Net as a deployment stack.

Subpackages: ``iounet.plugins`` (the PrRoIPool ops in every backend), ``iounet.training``,
``iounet.export`` and ``iounet.runtime``.
"""

from iounet._version import __version__

__all__ = ["__version__"]
