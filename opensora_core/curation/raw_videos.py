"""Step 1, asset `raw_videos` / `opensora data raw-videos`: probe one raw file and read its
sidecar caption into `partitions/<key>/raw/manifest.json`."""

from __future__ import annotations

from dataclasses import asdict

from opensora_core.curation.captions import read_sidecar
from opensora_core.curation.config import CurationConfig
from opensora_core.curation.ingest import Probe, RawFile, probe_file
from opensora_core.curation.partitions import (
    raw_fingerprint,
    read_manifest,
    step_dir,
    write_manifest,
)
from opensora_core.curation.storage import FileList, Storage


def _read_caption(source: Storage | FileList, path: str, notes: list[str]) -> tuple[str | None, bool]:
    """(sidecar caption of raw file `path` or None, whether to read it again next run);
    a problem is added to `notes`."""
    try:
        return read_sidecar(source, path), False
    except UnicodeDecodeError as err:  # the file's own: ignored until it changes
        notes.append(f"sidecar caption is not UTF-8 text, ignored ({err})")
        return None, False
    except Exception as err:  # noqa: BLE001 - a store's error, as for the raw file: retried
        notes.append(f"sidecar caption could not be read ({type(err).__name__}: {err})")
        return None, True


def refresh_caption(source: Storage | FileList, out: Storage, raw: RawFile) -> dict:
    """Read again the sidecar caption of a probed file whose sidecar changed (`raw.sidecar`
    differs from the manifest's): the probe stands, only the caption and its notes change."""
    manifest = read_manifest(out, raw.key, "raw")
    notes = [n for n in manifest["probe"]["notes"] if not n.startswith("sidecar caption")]
    if manifest["rejected"] is None:
        manifest["caption"], manifest["retry"] = _read_caption(source, raw.path, notes)
    manifest["probe"]["notes"], manifest["sidecar"] = notes, raw.sidecar
    with out.staging_dir(*step_dir(raw.key, "raw")) as folder:
        write_manifest(folder, manifest)
    return manifest


def raw_videos(source: Storage | FileList, out: Storage, raw: RawFile, config: CurationConfig) -> dict:
    """Probe one raw file and read its sidecar caption; publish the probe manifest.

    A file that could not be read (a listed file missing or its store unreachable) is
    rejected with the reason, and marked `retry`: :func:`curate` reads it again next time;
    so is a file whose sidecar caption could not be read (noted, not rejected).
    """
    probe, caption, retry = Probe(path=raw.path, kind=raw.kind, sha256=raw.sha256, size=raw.size), None, False
    if raw.problem:
        probe.rejected, retry = raw.problem, True
    else:
        staged = False
        try:
            with source.local_copy(raw.path) as local:
                staged = True
                probe = probe_file(local, raw)
        except Exception as err:  # a store's error (network, permissions): recorded, retried
            if staged:  # the probe's own: a bug, not the file's
                raise
            probe.rejected, retry = f"could not be read ({type(err).__name__}: {err})", True
        if probe.rejected is None:
            caption, retry = _read_caption(source, raw.path, probe.notes)
    manifest = {
        "step": "raw_videos", "key": raw.key, "source": source.url_of(raw.path), "path": raw.path,
        "sha256": raw.sha256, "fingerprint": raw_fingerprint(config, raw.kind),
        "probe": asdict(probe), "caption": caption, "sidecar": raw.sidecar, "rejected": None, "retry": retry,
    }
    if probe.rejected:
        manifest["rejected"] = {"step": "raw_videos", "reason": probe.rejected}
    with out.staging_dir(*step_dir(raw.key, "raw")) as folder:
        write_manifest(folder, manifest)
    return manifest
