"""``manifest.json`` of an exported model folder: what the graphs are and how to feed them.

The manifest names every graph file with its sha256, inputs and outputs, the classes (label
order) with their COCO category ids, the FPN strides, the input convention and the versions that
wrote it. ``load_manifest`` checks all of it against the files before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "iounet-model"
FORMAT_VERSION = 1
#: The graphs of an exported model (see iounet.export.graphs), by role.
GRAPH_ROLES = ("backbone", "head", "iou_grad", "refine_step")
PRECISIONS = ("fp32", "fp16")


class ManifestError(ValueError):
    """A model folder whose manifest is missing, malformed or does not match its files."""


@dataclass(frozen=True)
class Manifest:
    """A checked manifest and the folder it describes."""

    folder: Path
    data: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.data["categories"]]

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.data["categories"]]

    @property
    def num_classes(self) -> int:
        return len(self.data["categories"])

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.data["fpn_strides"])

    def precisions(self) -> list[str]:
        """The precisions whose four graphs the folder holds."""
        return [p for p in PRECISIONS if p in self.data["graphs"]]

    def graph(self, role: str, precision: str = "fp32") -> dict[str, Any]:
        """The entry of one graph: file, sha256, inputs, outputs."""
        if precision not in self.data["graphs"]:
            raise ManifestError(
                f"{self.folder} has no {precision} graphs (it has {self.precisions()}); "
                f"export with `iounet export --fp16` for fp16"
            )
        return self.data["graphs"][precision][role]

    def graph_path(self, role: str, precision: str = "fp32") -> Path:
        return self.folder / self.graph(role, precision)["file"]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """The manifest of an exported model folder, checked (and the files' sha256 when `verify`)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not path.is_file():
        raise ManifestError(f"{folder} is not an exported iounet model: {MANIFEST_NAME} missing")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON: {error}") from error
    _check_structure(path, data)
    manifest = Manifest(folder, data)
    if verify:
        for precision in manifest.precisions():
            for role in GRAPH_ROLES:
                entry = manifest.graph(role, precision)
                file = folder / entry["file"]
                if not file.is_file():
                    raise ManifestError(f"{path} lists {entry['file']}, which is missing")
                if sha256_file(file) != entry["sha256"]:
                    raise ManifestError(
                        f"{file} does not match its sha256 in {path} (changed or corrupt)"
                    )
    return manifest


def _check_structure(path: Path, data: Any) -> None:
    def fail(problem: str) -> None:
        raise ManifestError(f"{path}: {problem}")

    if not isinstance(data, dict):
        fail("the manifest must be a JSON object")
    if data.get("format") != FORMAT:
        fail(f"format must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("format_version") != FORMAT_VERSION:
        fail(
            f"format_version {data.get('format_version')!r} is not supported "
            f"(this iounet reads {FORMAT_VERSION}); export the model again"
        )
    for key in ("categories", "fpn_strides", "graphs", "input", "refinement", "versions"):
        if key not in data:
            fail(f"missing key {key!r}")
    categories = data["categories"]
    if not (
        isinstance(categories, list)
        and categories
        and all(
            isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
            for c in categories
        )
    ):
        fail("categories must be a non-empty list of {id: int, name: str}")
    if len({c["id"] for c in categories}) != len(categories):
        fail("category ids must be unique")
    strides = data["fpn_strides"]
    if not (isinstance(strides, list) and all(isinstance(s, int) and s > 0 for s in strides)):
        fail("fpn_strides must be a list of positive integers")
    graphs = data["graphs"]
    if not isinstance(graphs, dict) or "fp32" not in graphs:
        fail("graphs must hold at least the fp32 graphs")
    for precision, entries in graphs.items():
        if precision not in PRECISIONS:
            fail(f"unknown precision {precision!r} in graphs")
        if not isinstance(entries, dict) or set(entries) != set(GRAPH_ROLES):
            fail(f"graphs.{precision} must hold exactly {list(GRAPH_ROLES)}")
        for role, entry in entries.items():
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("file"), str)
                and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("inputs"), list)
                and isinstance(entry.get("outputs"), list)
            ):
                fail(f"graphs.{precision}.{role} needs file, sha256, inputs and outputs")
            if Path(entry["file"]).name != entry["file"]:
                fail(f"graphs.{precision}.{role}.file must be a plain file name")
