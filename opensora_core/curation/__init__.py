"""Curation: raw files -> scene clips -> scores -> training table, one module per step,
named after its Dagster asset (and its `opensora data` subcommand):

| step | module / function | writes (under the output root) |
| --- | --- | --- |
| ingest/probe | :mod:`.raw_videos` | `partitions/<key>/raw/manifest.json` |
| scene cuts | :mod:`.scene_clips` (the cutter: :mod:`.scenes`) | `partitions/<key>/clips/` (mp4 + jpg, `clips.parquet`, `sample_scores.parquet`) |
| scores, captions | :mod:`.scored_clips` (scorers: :mod:`.scoring`) | `partitions/<key>/scores/scores.parquet` |
| filters, merge | :mod:`.training_dataset` | `meta.csv`, `meta.parquet`, `rejected.csv`, `filtered.csv` (+ `merged_scores.parquet`, a cache) |

One partition per raw file (key from its path and content hash). Each step publishes
its folder as a whole (:meth:`Storage.staging_dir`) with `manifest.json` written last,
so re-running one partition touches no other and a crash leaves no half-written step.
A bad file never stops the pipeline: its step records the reason in the manifest and
the merge lists it in `rejected.csv`. :func:`.runner.curate` runs everything, skipping
steps whose manifest matches the file's hash and the settings that made it
(:mod:`.partitions`).

The video is decoded once: while :func:`.scene_clips.scene_clips` cuts it, the
weights-free scorers (`flow`, `ocr`, `quality`) score each clip from frames the cutter
already has, on a background thread, into `sample_scores.parquet`, each recorded in the
manifest with its fingerprint (name, version, settings).
:func:`.scored_clips.scored_clips` takes those columns as they are while the
fingerprints match, and decodes clips only for the rest (changed scorer settings, the
CLIP scorers, a captioning model).

Discovery and probing are in :mod:`.ingest`, captions in :mod:`.captions`, the
settings in :mod:`.config`, local folders and object stores in :mod:`.storage`.
Curation builds on the training-data helpers of :mod:`opensora_core.data` (decoding,
frame arrays, images), never on eval, infer, train or benchmarks.
"""
