"""The PrRoIPool ops in every backend; the PyTorch op is the reference."""

from iounet.plugins.pytorch import PrRoIPool, prroi_pool, prroi_pool_coord_grad

__all__ = ["PrRoIPool", "prroi_pool", "prroi_pool_coord_grad"]
