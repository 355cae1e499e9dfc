"""The models the app samples from: registered versions of `stdit2` (downloaded once
into the app's folder) or a local export/checkpoint folder, loaded with their profile's
encoders and kept while in use, at most `max_loaded` at a time."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from opensora_core.infer.sample import load_generation_stack
from opensora_core.tracking.registry import DEFAULT_MODEL_NAME, download_version
from opensora_core.tracking.versions import VersionInfo, list_versions, version_run_id

REGISTRY_PREFIX = "registry:"


@dataclass(frozen=True)
class Source:
    """One model to load: its weights file, the profile its encoders come from, and
    how the page names it."""

    checkpoint: Path
    profile: str
    label: str

    @property
    def for_command(self) -> str:
        """What `opensora sample --checkpoint` takes to load the same weights and encoders."""
        return str(self.checkpoint)


class ModelStore:
    """The registry and local folders behind the model choice, and the loaded models."""

    def __init__(self, tracking_uri: str | None, cache_dir: Path, model_name: str = DEFAULT_MODEL_NAME,
                 max_loaded: int = 1):
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1, got {max_loaded}")
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        self.model_name = model_name
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[tuple, tuple[object, dict]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read (the tests check reuse)

    # The registry

    def versions(self) -> list[VersionInfo]:
        """Registered versions, newest first; [] without a store (or an unreadable one)."""
        if self.tracking_uri is None:
            return []
        from opensora_core.tracking.store import TrackingUnreachable, check_store_to_read

        try:
            check_store_to_read(self.tracking_uri)
            return list_versions(self.tracking_uri, self.model_name)
        except TrackingUnreachable:
            return []

    def choices(self) -> tuple[list[tuple[str, str]], str | None]:
        """(label, value) pairs of the registered versions, and the champion's value (the
        newest version's when there is no champion)."""
        versions = self.versions()
        pairs = [(f"{self.model_name} {v.label()}", f"{REGISTRY_PREFIX}{v.version}") for v in versions]
        default = next((f"{REGISTRY_PREFIX}{v.version}" for v in versions if v.is_champion),
                       pairs[0][1] if pairs else None)
        return pairs, default

    def resolve(self, model: str, profile: str) -> Source:
        """The weights behind a choice: a registry version (downloaded on first use) or a
        local folder or file. LookupError/FileNotFoundError name what is missing."""
        model = (model or "").strip()
        if not model:
            raise ValueError("choose a registered version or give a local model folder")
        if model.startswith(REGISTRY_PREFIX):
            number = model[len(REGISTRY_PREFIX):]
            if not number.isdigit():
                raise ValueError(f"model {model!r}: expected {REGISTRY_PREFIX}<version number>")
            if self.tracking_uri is None:
                raise LookupError("no MLflow store is configured: give a local model folder")
            run_id = version_run_id(self.tracking_uri, int(number), self.model_name)
            if run_id is None:
                raise LookupError(f"{self.model_name} has no version {number} in the registry at "
                                  f"{self.tracking_uri} (deleted?); refresh the page for the current versions")
            # Named after its run too: a recreated store numbers its versions from 1 again.
            folder = self.cache_dir / f"{self.model_name}-v{number}-{run_id[:12]}"
            weights = folder / "model.safetensors"
            if not weights.is_file():
                weights = download_version(self.tracking_uri, int(number), folder, self.model_name)
            return Source(weights, profile, f"{self.model_name} v{number}")
        path = Path(model).expanduser()
        weights = path / "model.safetensors" if path.is_dir() else path
        if not weights.is_file():
            raise FileNotFoundError(f"no model at {model}: give an export folder (model.safetensors, config.json) "
                                    "or an Open-Sora checkpoint file")
        return Source(weights, profile, str(path))

    # Loaded models

    def load(self, source: Source):
        """(generator, provenance) of `source`, loaded once and kept while it is among the
        `max_loaded` most recently used; older ones are dropped first, so memory holds
        at most that many models."""
        stat = source.checkpoint.stat()
        key = (str(source.checkpoint.resolve()), stat.st_mtime_ns, stat.st_size, source.profile)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            while len(self._loaded) >= self.max_loaded:
                self._loaded.popitem(last=False)
                gc.collect()
            loaded = load_generation_stack(source.checkpoint, None, source.profile)
            self.loads += 1
            self._loaded[key] = loaded
            return loaded

    def loaded_labels(self) -> list[str]:
        with self._lock:
            return [key[0] for key in self._loaded]
