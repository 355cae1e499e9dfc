"""Scoring clips while their video is still being cut.

:class:`BackgroundScorer` takes each clip's sample frames from the cutter (a
:class:`opensora_core.curation.scenes.cutter.Sampler`) and scores them on worker threads, so
scoring overlaps with decoding and encoding (OpenCV and Tesseract run without the
GIL). Each scorer has its own worker thread, where its `prepare` (loading a model)
runs first. Scorers with a fixed cost per call (`batched`: the tesseract binary's
start-up) get up to `batch_size` clips at a time, the last batch as soon as the video
ends; the others one clip at a time, as soon as it ends. At most a batch of sample
frames waits, plus what the workers hold.

A scorer that fails here is reported, not raised: cutting does not depend on it, and
`scored_clips` scores its column by decoding the clips instead (and fails there, as
it would have without this shortcut, if the error is real).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from opensora_core.curation.scoring.base import ClipSamples, Scorer, sample_size


class BackgroundScorer:
    def __init__(self, scorers: list[Scorer], batch_size: int) -> None:
        if any(s.needs_color for s in scorers):
            raise ValueError("only scorers that read luma alone can score while cutting")
        self.scorers = scorers
        self.size = sample_size(scorers) or 0
        self.batch_size = batch_size
        self._waiting: dict[str, list[ClipSamples]] = {s.name: [] for s in scorers if s.batched}
        self._futures: list[Future] = []
        self.failed: dict[str, str] = {}  # scorer name -> error, filled by results()
        # One worker per scorer: the last clip's scores (after the video ended) are not
        # computed one scorer after another.
        self._executors = {s.name: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clip-scorer-{s.name}")
                           for s in scorers}
        for scorer in scorers:  # models load while the first frames decode
            self._futures.append(self._executors[scorer.name].submit(self._prepare, scorer))

    def positions(self, num_frames: int) -> set[int]:
        return set().union(*(s.positions(num_frames) for s in self.scorers))

    def take(self, clip, samples: ClipSamples) -> None:
        """Score `samples` (one finished clip) in the background."""
        for scorer in self.scorers:
            if not scorer.batched:
                self._futures.append(self._executors[scorer.name].submit(self._score, scorer, [samples]))
                continue
            keep = scorer.positions(samples.num_frames)
            self._waiting[scorer.name].append(
                ClipSamples(samples.clip_id, samples.num_frames, {p: f for p, f in samples.frames.items() if p in keep}))
            if len(self._waiting[scorer.name]) >= self.batch_size:
                self._flush(scorer)

    def flush(self) -> None:
        """Start scoring the clips still waiting for a full batch."""
        for scorer in self.scorers:
            self._flush(scorer)

    def _flush(self, scorer: Scorer) -> None:
        if self._waiting.get(scorer.name):
            batch, self._waiting[scorer.name] = self._waiting[scorer.name], []
            self._futures.append(self._executors[scorer.name].submit(self._score, scorer, batch))

    @staticmethod
    def _prepare(scorer: Scorer) -> tuple[dict[str, dict], dict[str, str]]:
        def load() -> dict:
            scorer.prepare()
            return {}

        return BackgroundScorer._reported(scorer, load)

    @staticmethod
    def _score(scorer: Scorer, batch: list[ClipSamples]) -> tuple[dict[str, dict], dict[str, str]]:
        return BackgroundScorer._reported(
            scorer, lambda: {s.clip_id: values for s, values in zip(batch, scorer.score(batch), strict=True)})

    @staticmethod
    def _reported(scorer: Scorer, work) -> tuple[dict[str, dict], dict[str, str]]:
        """(clip id -> columns, {}) from `work`, or ({}, {scorer name: error}) when it fails."""
        try:
            return work(), {}
        except Exception as err:  # noqa: BLE001 - reported; scored_clips scores it by decoding
            return {}, {scorer.name: f"{type(err).__name__}: {err}"}

    def results(self) -> dict[str, dict]:
        """clip id -> the columns of every scorer that did not fail (see `failed`),
        once all are scored."""
        self.flush()
        rows: dict[str, dict] = {}
        try:
            for future in self._futures:
                values, failed = future.result()
                for clip_id, columns in values.items():
                    rows.setdefault(clip_id, {}).update(columns)
                for name, error in failed.items():
                    self.failed.setdefault(name, error)
        finally:
            self.close()
        return rows

    def close(self) -> None:
        """Stop (after an error: queued work is dropped)."""
        for future in self._futures:
            future.cancel()
        for executor in self._executors.values():
            executor.shutdown(wait=True)
