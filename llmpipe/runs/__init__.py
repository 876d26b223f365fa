"""Layer 2, runs: the typed manifest, stage folders (`.partial` work folder → rename), parent resolution,
seals of trainer checkpoints, integrity checks of model folders, and the context a stage trains in.

Layout of a run:

    runs/<run>/<stage>/            a finished stage: HF model + tokenizer files, manifest.json
    runs/<run>/.<stage>.partial/   a stage being trained: trainer checkpoints, manifest (running/failed)
"""

from llmpipe.runs.folders import StageWriter, config_diff, resolve_parent, versions
from llmpipe.runs.manifest import MANIFEST, Manifest, StageRef, manifest_sha, read_manifest, read_manifest_json, write_manifest

__all__ = [
    "MANIFEST", "Manifest", "StageRef", "StageWriter", "config_diff", "manifest_sha", "read_manifest", "read_manifest_json",
    "resolve_parent", "versions", "write_manifest",
]
