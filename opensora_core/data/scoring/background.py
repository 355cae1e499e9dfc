"""Scoring clips while their video is still being cut.

:class:`BackgroundScorer` takes each clip's sample frames from the cutter (a
:class:`opensora_core.data.scenes.Sampler`) and scores them on worker threads, so
scoring overlaps with decoding and encoding (OpenCV and Tesseract, a subprocess, run
without the GIL). Scorers with a fixed cost per call (`batched`, i.e. Tesseract's
start-up) get up to `batch_size` clips at a time, on their own thread so that the
last batch starts as soon as the video ends; the others one clip at a time, as soon
as it ends. Each scorer's `prepare` (loading a model) runs first on its worker. At
most a batch of sample frames waits, plus what the workers hold.

A scorer that fails here is reported, not raised: cutting does not depend on it, and
`scored_clips` scores its column by decoding the clips instead (and fails there, as
it would have without this shortcut, if the error is real).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from opensora_core.data.scoring.base import ClipSamples, Scorer, sample_size


class BackgroundScorer:
    def __init__(self, scorers: list[Scorer], batch_size: int) -> None:
        if any(s.needs_color for s in scorers):
            raise ValueError("only scorers that read luma alone can score while cutting")
        self.scorers = scorers
        self.size = sample_size(scorers) or 0
        self.batch_size = batch_size
        self._waiting: list[ClipSamples] = []
        self._futures: list[Future] = []
        self.failed: dict[str, str] = {}  # scorer name -> error, filled by results()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-scorer")
        self._batch_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-batch-scorer")
        for scorer in scorers:  # models load while the first frames decode
            executor = self._batch_executor if scorer.batched else self._executor
            self._futures.append(executor.submit(self._prepare, scorer))

    def positions(self, num_frames: int) -> set[int]:
        return set().union(*(s.positions(num_frames) for s in self.scorers))

    def take(self, clip, samples: ClipSamples) -> None:
        """Score `samples` (one finished clip) in the background."""
        now = [s for s in self.scorers if not s.batched]
        if now:
            self._futures.append(self._executor.submit(self._score, now, [samples]))
        later = [s for s in self.scorers if s.batched]
        if later:
            keep = set().union(*(s.positions(samples.num_frames) for s in later))
            self._waiting.append(ClipSamples(samples.clip_id, samples.num_frames,
                                             {p: f for p, f in samples.frames.items() if p in keep}))
            if len(self._waiting) >= self.batch_size:
                self._flush()

    def flush(self) -> None:
        """Start scoring the clips still waiting for a full batch."""
        self._flush()

    def _flush(self) -> None:
        if self._waiting:
            batch, self._waiting = self._waiting, []
            self._futures.append(self._batch_executor.submit(self._score, [s for s in self.scorers if s.batched],
                                                             batch))

    @staticmethod
    def _prepare(scorer: Scorer) -> tuple[dict[str, dict], dict[str, str]]:
        try:
            scorer.prepare()
        except Exception as err:  # noqa: BLE001 - reported; scored_clips scores it by decoding
            return {}, {scorer.name: f"{type(err).__name__}: {err}"}
        return {}, {}

    @staticmethod
    def _score(scorers: list[Scorer], batch: list[ClipSamples]) -> tuple[dict[str, dict], dict[str, str]]:
        rows: dict[str, dict] = {s.clip_id: {} for s in batch}
        failed: dict[str, str] = {}
        for scorer in scorers:
            try:
                for samples, values in zip(batch, scorer.score(batch), strict=True):
                    rows[samples.clip_id].update(values)
            except Exception as err:  # noqa: BLE001 - reported; scored_clips scores it by decoding
                failed[scorer.name] = f"{type(err).__name__}: {err}"
        return rows, failed

    def results(self) -> dict[str, dict]:
        """clip id -> the columns of every scorer that did not fail (see `failed`),
        once all are scored."""
        self._flush()
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
        self._executor.shutdown(wait=True)
        self._batch_executor.shutdown(wait=True)
