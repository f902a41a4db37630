"""iounet: IoU-Net as a deployment stack.

Subpackages: ``iounet.plugins`` (the PrRoIPool ops in every backend), ``iounet.training``,
``iounet.export`` and ``iounet.runtime``.
"""

from iounet import version

__version__ = version.__version__

__all__ = ["__version__"]
