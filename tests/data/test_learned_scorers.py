"""The scorers and the captioner that need weights (`aes`, `match`, a captioning model)
and imported caption tables, run through `curate` on a small synthetic dataset with
tiny random models saved here; and the config mistakes around them, which must fail
before any file is read."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opensora_core import cli
from opensora_core.config import ConfigError
from opensora_core.curation import partitions, runner
from opensora_core.curation import scored_clips as scores_step
from opensora_core.curation.config import CurationConfig, content_digest
from opensora_core.curation.runner import curate
from opensora_core.curation.scoring import SCORE_RANGES, build_scorers, read_samples
from opensora_core.curation.scoring.clip_models import AestheticScorer
from opensora_core.curation.storage import Storage
from opensora_core.data.synthetic import synth
from tests.data.learned_models import save_aesthetic_head, save_tiny_captioner, save_tiny_clip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"clip": save_tiny_clip(root / "clip"), "mlp": save_aesthetic_head(root / "mlp.pth"),
            "captioner": save_tiny_captioner(root / "captioner")}


def _config(models=None, captions: dict | None = None, **filters) -> CurationConfig:
    scorers = {"flow": {"enabled": False}, "ocr": {"enabled": False}, "quality": {"samples": 2},
               "captions": captions or {}}
    if models:
        scorers |= {"aes": {"clip": str(models["clip"]), "mlp": str(models["mlp"]), "samples": 2},
                    "match": {"clip": str(models["clip"]), "samples": 2}}
    return CurationConfig.model_validate({"scenes": {"min_frames": 8, "max_frames": 64}, "scorers": scorers,
                                          "filters": filters})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, models):
    """Four one-scene videos and a still. Captions: videos 0 and 1 have sidecars (video
    0 also a table row, which the sidecar beats), video 2 only a row of an Open-Sora
    table (a path elsewhere: rows match by file name), video 3 and the still nothing,
    so the model captions them."""
    root = tmp_path_factory.mktemp("learned")
    samples = synth(root / "raw", videos=4, images=1, num_frames=16, seed=3)
    names = [s.path for s in samples]
    for name in names[2:]:
        (root / "raw" / name).with_suffix(".txt").unlink()
    pd.DataFrame({"path": [f"/elsewhere/{names[0]}", f"/elsewhere/{names[2]}"],
                  "text": ["a caption the sidecar beats", "a caption from the table"]}
                 ).to_csv(root / "captions.csv", index=False)
    config = _config(models, {"import_csv": str(root / "captions.csv"), "model": str(models["captioner"]),
                              "max_new_tokens": 6})
    summary = curate(root / "raw", root / "out", config)
    return root, names, samples, config, summary


def _by_name(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {Path(row["source"]).name: row for _, row in table.iterrows()}


def test_aes_and_match_come_from_the_clip_weights(dataset, models):
    root, _, _, config, summary = dataset
    meta = pd.read_parquet(root / "out" / "meta.parquet")
    assert len(meta) == summary.kept == 5 and not summary.warnings
    for column in ("aes", "match", "quality"):
        values = meta[column].to_numpy(dtype=float)
        low, high = SCORE_RANGES[column]
        assert np.isfinite(values).all(), column
        assert (low is None or (values >= low).all()) and (high is None or (values <= high).all()), column
    assert meta["aes"].nunique() == 5 and meta["match"].nunique() == 5  # one score per clip, not a constant
    # quality is its own column: aes is the MLP over CLIP embeddings, recomputed here from the clip's frames.
    assert not np.allclose(meta["aes"], meta["quality"])
    scorer = AestheticScorer(config.scorers.aes)
    row = meta[meta["media"] == "video"].iloc[0]
    samples = read_samples(row["path"], row["clip_id"], int(row["num_frames"]), scorer.positions(row["num_frames"]))
    assert scorer.score([samples])[0]["aes"] == pytest.approx(row["aes"], rel=1e-5)
    # The manifests name the weights' contents.
    manifest = partitions.read_manifest(Storage(root / "out"), row["partition"], "scores")
    clip, mlp = content_digest(str(models["clip"])), content_digest(str(models["mlp"]))
    assert manifest["scorers"]["aes"]["version"] == f"clip-vit-l14-mlp-1+{clip}+{mlp}"
    assert manifest["scorers"]["match"]["version"] == f"clip-cosine-1+{clip}"


def test_captions_sidecar_then_table_then_model(dataset):
    root, names, samples, _, _ = dataset
    rows = _by_name(pd.read_csv(root / "out" / "meta.csv"))
    assert (rows[names[0]]["text"], rows[names[0]]["text_source"]) == (samples[0].text, "sidecar")
    assert (rows[names[1]]["text"], rows[names[1]]["text_source"]) == (samples[1].text, "sidecar")
    assert (rows[names[2]]["text"], rows[names[2]]["text_source"]) == ("a caption from the table", "csv")
    for name in names[3:]:  # a random model: some words of its vocabulary
        assert rows[name]["text_source"] == "model"
        assert isinstance(rows[name]["text"], str) and rows[name]["text"].strip(), name


def test_filters_on_aes_and_match_filter_and_reject_with_reasons(dataset, tmp_path, monkeypatch):
    root, _, _, config, _ = dataset
    shutil.copytree(root / "out", tmp_path / "out")
    meta = pd.read_parquet(root / "out" / "meta.parquet").set_index("source")
    lowest_aes = meta["aes"].idxmin()
    rest = meta.drop(index=lowest_aes)
    lowest_match = rest["match"].idxmin()
    filters = {"min_aes": float(meta["aes"].nsmallest(2).iloc[-1]),
               "min_match": float(rest["match"].nsmallest(2).iloc[-1])}
    rescored = []
    original = runner.scored_clips
    monkeypatch.setattr(runner, "scored_clips", lambda *a, **k: rescored.append(a[1]) or original(*a, **k))
    summary = curate(root / "raw", tmp_path / "out", config.model_copy(update={
        "filters": config.filters.model_copy(update=filters)}))
    assert not rescored  # thresholds are no scorer setting: nothing is scored again
    assert (summary.kept, summary.filtered) == (3, 2)
    filtered = pd.read_csv(tmp_path / "out" / "filtered.csv").set_index("source")
    assert filtered.loc[lowest_aes, "reason"].startswith("aes ")
    assert "(filters.min_aes)" in filtered.loc[lowest_aes, "reason"]
    assert filtered.loc[lowest_match, "reason"].startswith("match ")
    assert "(filters.min_match)" in filtered.loc[lowest_match, "reason"]
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv").set_index("path")
    assert set(rejected.index) == {lowest_aes, lowest_match}
    assert (rejected["step"] == "training_dataset").all()
    assert rejected.loc[lowest_aes, "reason"] == "all 1 clips filtered: min_aes (1)"
    assert rejected.loc[lowest_match, "reason"] == "all 1 clips filtered: min_match (1)"


def test_new_weights_at_the_same_path_score_again(dataset, models, tmp_path, monkeypatch):
    root, _, _, config, _ = dataset
    shutil.copytree(root / "out", tmp_path / "out")
    mlp = tmp_path / "mlp.pth"
    shutil.copy(models["mlp"], mlp)
    moved = config.model_copy(update={"scorers": config.scorers.model_copy(update={
        "aes": config.scorers.aes.model_copy(update={"mlp": str(mlp)})})})
    curate(root / "raw", tmp_path / "out", moved)
    before = pd.read_parquet(tmp_path / "out" / "meta.parquet").set_index("clip_id")
    rescored = []
    original = runner.scored_clips
    monkeypatch.setattr(runner, "scored_clips", lambda *a, **k: rescored.append(a[1]) or original(*a, **k))
    curate(root / "raw", tmp_path / "out", moved)
    assert not rescored  # the same weights: the stored scores stand
    save_aesthetic_head(mlp, seed=1)
    curate(root / "raw", tmp_path / "out", moved)
    assert len(rescored) == 5
    after = pd.read_parquet(tmp_path / "out" / "meta.parquet").set_index("clip_id").loc[before.index]
    assert not np.allclose(after["aes"], before["aes"])
    np.testing.assert_allclose(after["match"], before["match"], rtol=1e-5)  # the same CLIP
    manifest = partitions.read_manifest(Storage(tmp_path / "out"), after["partition"].iloc[0], "scores")
    assert manifest["scorers"]["aes"]["version"].endswith(content_digest(str(mlp)))


def _two_shots(path: Path, dark: int = 20) -> None:
    """Two 2-second scenes; `dark` (the first one's background) tells videos apart."""
    from opensora_core.data.synthetic import moving_shape_clip
    from opensora_core.data.video_io import write_video

    write_video(path, np.concatenate([
        moving_shape_clip(24, 64, 64, "yellow", "up", background=(dark, dark, dark)),
        moving_shape_clip(24, 64, 64, "green", "down", shape="triangle", background=(200, 200, 200)),
    ]), fps=12)


def test_imported_tables_caption_clips_through_curate(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _two_shots(raw / "shots.mp4")  # two 2-second scenes
    _two_shots(raw / "other.mp4", dark=40)
    pd.DataFrame({"videoID": ["shots", "unrelated"],
                  "timestamp": ["[['0:00:00.000', '0:00:02.000'], ['0:00:02.000', '0:00:04.000']]",
                                "[['0:00:00.000', '0:00:04.000']]"],
                  "caption": ["['a yellow square going up', 'a green triangle going down']", "['no']"]}
                 ).to_csv(tmp_path / "panda.csv", index=False)
    summary = curate(raw, tmp_path / "panda", _config(captions={"import_csv": str(tmp_path / "panda.csv")}))
    meta = pd.read_csv(tmp_path / "panda" / "meta.csv").sort_values(["source", "start_frame"])
    assert summary.kept == 4
    shots = meta[meta["source"] == str(raw / "shots.mp4")]
    assert list(zip(shots["start_frame"], shots["text"], shots["text_source"])) == [
        (0, "a yellow square going up", "csv"), (24, "a green triangle going down", "csv")]
    assert meta.loc[meta["source"] == str(raw / "other.mp4"), "text"].isna().all()  # no row for it
    # Open-Sora's layout: one caption per file, whatever its folder in the table.
    pd.DataFrame({"path": ["/data/raw/other.mp4"], "text": ["two shots"]}).to_csv(tmp_path / "os.csv", index=False)
    curate(raw, tmp_path / "opensora", _config(captions={"import_csv": str(tmp_path / "os.csv")}))
    meta = pd.read_csv(tmp_path / "opensora" / "meta.csv")
    assert list(meta.loc[meta["source"] == str(raw / "other.mp4"), "text"]) == ["two shots", "two shots"]
    assert meta.loc[meta["source"] == str(raw / "shots.mp4"), "text"].isna().all()
    # Nothing to score: the table is not parsed again (a full Panda-70M table takes minutes).
    from opensora_core.curation.captions import CaptionTable

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CaptionTable, "from_csv", classmethod(lambda cls, path: pytest.fail("parsed, nothing to do")))
        curate(raw, tmp_path / "opensora", _config(captions={"import_csv": str(tmp_path / "os.csv")}))


MISTAKES = {
    "table missing": ({"captions": {"import_csv": "{tmp}/nope.csv"}}, "scorers.captions.import_csv",
                      "{tmp}/nope.csv: no such file"),
    "table layout": ({"captions": {"import_csv": "{tmp}/wrong.csv"}}, "scorers.captions.import_csv",
                     ("{tmp}/wrong.csv: not a caption table: expected columns path,text (Open-Sora) or "
                      "videoID,timestamp,caption (Panda-70M), got a, b")),
    "table not utf-8": ({"captions": {"import_csv": "{tmp}/latin.csv"}}, "scorers.captions.import_csv",
                        "{tmp}/latin.csv: not UTF-8 text"),
    "panda row": ({"captions": {"import_csv": "{tmp}/panda.csv"}}, "scorers.captions.import_csv",
                  "{tmp}/panda.csv: row 2: timestamp and caption must be Python lists"),
    "model missing": ({"captions": {"model": "{tmp}/no-model"}}, "scorers.captions.model",
                      "{tmp}/no-model: no such folder"),
    "model not a model": ({"captions": {"model": "{tmp}"}}, "scorers.captions.model", "{tmp}: no config.json"),
    "clip missing": ({"aes": {"clip": "{tmp}/no-clip", "mlp": "{mlp}"}}, "scorers.aes.clip",
                     "CLIP folder {tmp}/no-clip: no such folder"),
    "head missing": ({"aes": {"clip": "{clip}", "mlp": "{tmp}/no-mlp.pth"}}, "scorers.aes.mlp",
                     "{tmp}/no-mlp.pth: no such file"),
    "match not clip": ({"match": {"clip": "{captioner}"}}, "scorers.match.clip",
                       "config.json has model_type 'llava', not 'clip'"),
}


TABLE_BODY_MISTAKES = {"table not utf-8", "panda row"}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_config_mistakes_fail_before_any_file_is_read(mistake, dataset, models, tmp_path, monkeypatch):
    root = dataset[0]
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    (tmp_path / "latin.csv").write_bytes("path,text\nclip.mp4,café crème\n".encode("latin-1"))
    (tmp_path / "panda.csv").write_text('videoID,timestamp,caption\n'
                                        'a,"[[\'0:00:00.000\', \'0:00:01.000\']]","[\'ok\']"\n'
                                        'b,"[[0:00:00, 0:00:01]]","[\'broken\']"\n')
    scorers, key, expected = MISTAKES[mistake]
    fill = {"tmp": tmp_path, **models}
    scorers = {name: {k: v.format(**fill) for k, v in section.items()} for name, section in scorers.items()}
    config = CurationConfig.model_validate({"scorers": scorers})
    if mistake in TABLE_BODY_MISTAKES:  # the table is read whole once some clip is to be scored: before any
        for step in ("raw_videos", "scene_clips", "scored_clips"):  # file is processed
            monkeypatch.setattr(runner, step, lambda *a, **k: pytest.fail("a file was processed"))
    else:  # paths and headers: before any file is read
        monkeypatch.setattr(runner, "register_inputs", lambda *a, **k: pytest.fail("an input was read"))
    with pytest.raises(ConfigError) as err:
        curate(root / "raw", tmp_path / "fresh-out", config)
    assert str(err.value).startswith(f"{key}: ") and expected.format(**fill) in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # the step commands and assets check too
        scores_step.Captioning.from_config(config)


def test_weights_left_out_are_skipped_and_weights_missing_are_named(tmp_path):
    _, skipped = build_scorers(CurationConfig().scorers)
    assert skipped["aes"] == skipped["match"] == "no local weights configured"
    # Cutting builds the scorers too and needs no weights: missing ones keep theirs from
    # running there (curate and the scoring step refuse them up front, tested above).
    config = CurationConfig.model_validate({"scorers": {"aes": {"clip": str(tmp_path / "clip"),
                                                                "mlp": str(tmp_path / "mlp.pth")}}})
    _, skipped = build_scorers(config.scorers)
    assert skipped["aes"].startswith(f"scorers.aes.clip: CLIP folder {tmp_path / 'clip'}: no such folder")
    assert f"; scorers.aes.mlp: {tmp_path / 'mlp.pth'}: no such file" in skipped["aes"]
    with pytest.raises(ConfigError) as err:
        config.check_local_files()
    assert [line.split(":")[0] for line in err.value.problems] == ["scorers.aes.clip", "scorers.aes.mlp"]


def test_cli_reports_a_config_mistake_with_exit_code_2(dataset, tmp_path, monkeypatch, capsys):
    root = dataset[0]
    (tmp_path / "bad.yaml").write_text(f"scorers:\n  captions: {{model: {tmp_path}/no-model}}\n")
    monkeypatch.setattr(sys, "argv", ["opensora", "data", "curate", "--input", str(root / "raw"), "--out",
                                      str(tmp_path / "out"), "--config", str(tmp_path / "bad.yaml"), "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert err.startswith(f"config error: scorers.captions.model: {tmp_path}/no-model: no such folder")
    assert "Traceback" not in err and not (tmp_path / "out" / "partitions").exists()


def test_weight_digests_are_kept_across_processes(tmp_path, monkeypatch):
    from opensora_core.curation import config as config_module

    monkeypatch.setenv("OPENSORA_DIGEST_CACHE", str(tmp_path / "digests.json"))
    weights = tmp_path / "head.pth"
    weights.write_bytes(b"\1" * 4096)
    first = content_digest(str(weights))
    config_module._file_digest.cache_clear()  # as a new process: only the file cache remains
    hashed = []
    original = config_module.file_sha256
    monkeypatch.setattr(config_module, "file_sha256", lambda path: hashed.append(path) or original(path))
    assert content_digest(str(weights)) == first and hashed == []
    stat = weights.stat()
    weights.write_bytes(b"\2" * 4096)  # new contents, size and modification time kept (cp -p, rsync -t)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_digest(str(weights)) != first and hashed == [str(weights)]


def _digest_in_a_process(path: str) -> str:
    return content_digest(path)


def test_processes_hashing_at_once_keep_every_digest(tmp_path, monkeypatch):
    import json
    import multiprocessing

    cache = tmp_path / "digests.json"
    monkeypatch.setenv("OPENSORA_DIGEST_CACHE", str(cache))
    files = []
    for i in range(8):
        files.append(tmp_path / f"w{i}.bin")
        files[-1].write_bytes(bytes([i]) * 1024)
    # Spawned, not forked: earlier tests leave threads in this process (servers, PyAV
    # decoders), and a forked child can wait forever on a lock one of them held.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_digest_in_a_process, [str(f) for f in files])
    assert len(json.loads(cache.read_text())) == 8
    cache.write_text("null")  # valid JSON, not a table: taken as empty
    assert content_digest(str(tmp_path / "w0.bin")) == _digest_in_a_process(str(tmp_path / "w0.bin"))


def test_a_caption_table_on_a_web_server_is_stamped_by_what_the_server_says(tmp_path, caplog):
    """fsspec takes HTTP files as never changing; the fingerprint follows the server's
    size and Last-Modified instead, and an unreachable table stands for its URL."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    table = tmp_path / "captions.csv"
    table.write_text("path,text\nv.mp4,a caption\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/captions.csv"
    try:
        config = _config(captions={"import_csv": url})
        first = config.fingerprint("scorers")
        assert config.fingerprint("scorers") == first
        table.write_text("path,text\nv.mp4,another caption\n")
        os.utime(table, (table.stat().st_atime, table.stat().st_mtime + 5))  # HTTP dates are in seconds
        assert config.fingerprint("scorers") != first
        gone = _config(captions={"import_csv": url.replace("captions", "missing")})
        assert content_digest(gone.scorers.captions.import_csv) == gone.scorers.captions.import_csv
        assert "could not read its version" in caplog.text
    finally:
        server.shutdown()
        server.server_close()
