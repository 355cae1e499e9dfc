"""Everything, `opensora data curate`: every step for every raw file, reusing the
partitions that are up to date (:func:`opensora_core.curation.partitions.plan_steps`),
then the merge into the training table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from opensora_core.curation.config import CurationConfig
from opensora_core.curation.ingest import register_inputs
from opensora_core.curation.partitions import (
    clips_fingerprint,
    plan_steps,
    raw_fingerprint,
    sweep_partitions,
)
from opensora_core.curation.raw_videos import raw_videos, refresh_caption
from opensora_core.curation.scene_clips import scene_clips
from opensora_core.curation.scored_clips import Captioning, scored_clips
from opensora_core.curation.scoring import build_scorers
from opensora_core.curation.storage import FileList, Storage, open_source
from opensora_core.curation.training_dataset import DatasetSummary, training_dataset


class _FetchedOnce:
    """`source` as one raw file's steps in one run see it: the file (`rel`) is staged
    locally once, when a step first reads it, however many steps read it (a remote file
    is downloaded once for its probe and its cut, not once for each); everything else
    is `source`'s own."""

    def __init__(self, source: Storage | FileList, rel: str) -> None:
        self.source, self.rel = source, rel
        self._stack = contextlib.ExitStack()
        self._local: Path | None = None

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    @contextlib.contextmanager
    def local_copy(self, *parts: str) -> Iterator[Path]:
        if parts != (self.rel,):
            with self.source.local_copy(*parts) as local:
                yield local
            return
        if self._local is None:
            self._local = self._stack.enter_context(self.source.local_copy(self.rel))
        yield self._local

    def close(self) -> None:
        self._stack.close()


def curate(input: str | Storage | FileList, output: str | Storage, config: CurationConfig | None = None,
           progress: bool = False) -> DatasetSummary:
    """Run every step for every raw file under `input` (a folder, or a list of files:
    see :func:`open_source`), reusing up-to-date partitions, then merge and filter into
    `output`."""
    from tqdm.auto import tqdm

    config = config or CurationConfig()
    config.check_local_files()  # a missing model, weights or caption table fails here, before any file is read
    source = input if isinstance(input, Storage | FileList) else open_source(input)
    out = output if isinstance(output, Storage) else Storage(output)
    sweep_partitions(out)  # a killed run's staging folders and half-published steps
    files = register_inputs(source, config, index=out)
    scorers_fingerprint = config.fingerprint("scorers")
    fingerprints = {kind: {"raw": raw_fingerprint(config, kind), "clips": clips_fingerprint(config, kind),
                           "scores": scorers_fingerprint + clips_fingerprint(config, kind)}
                    for kind in ("video", "image")}
    ready = {s.name for s in build_scorers(config.scorers)[0]}
    plans = {raw.key: plan_steps(out, raw, fingerprints[raw.kind], ready) for raw in files}
    # A caption table is read whole (a malformed one named) before any file is processed,
    # and only when some clip is to be scored: a run with nothing to do does not parse it.
    captioning = Captioning.from_config(config, load_model=False) if any(p.score for p in plans.values()) \
        else Captioning()
    for raw in tqdm(files, desc="curating", unit="file", disable=not progress):
        plan = plans[raw.key]
        with contextlib.closing(_FetchedOnce(source, raw.path)) as fetched:
            if plan.probe:
                raw_videos(fetched, out, raw, config)
            elif plan.caption:
                refresh_caption(fetched, out, raw)
            if plan.cut:
                scene_clips(fetched, out, raw.key, config, progress=progress)
        if plan.score:
            captioning.load_model(config)  # once, when something is to be scored
            scored_clips(out, raw.key, config, captioning, progress=progress, scorers_fingerprint=scorers_fingerprint)
    return training_dataset(out, [f.key for f in files], config, source)
