"""A model folder of either kind: a detection model (``Manifest``) or a tracking model
(``TrackingManifest``), told apart by its manifest's format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from iounet.export.manifest import Manifest, load_manifest
from iounet.files import Output, check_output

if TYPE_CHECKING:
    from iounet.export.tracking_manifest import TrackingManifest


def load_model_manifest(
    model_dir: str | os.PathLike, verify: bool = True
) -> Manifest | TrackingManifest:
    """The checked manifest of a detection or a tracking model folder (and the graphs' sha256
    when `verify`)."""
    from iounet.export.tracking_manifest import is_tracking_model, load_tracking_manifest

    if is_tracking_model(model_dir):
        return load_tracking_manifest(model_dir, verify)
    return load_manifest(model_dir, verify)


def is_model_folder(folder: Path) -> bool:
    """True when `folder` holds a manifest this package wrote, of either kind (what ``--force``
    may replace); otherwise the error that says why not."""
    load_model_manifest(folder, verify=False)
    return True


def check_model_output(out: str | os.PathLike, force: bool) -> Output:
    """The model folder `out` an export may write, by the one overwrite rule
    (``iounet.files.check_output``), checked before any slow work."""
    return check_output(out, force, is_model_folder, "model folder", folder=True)
