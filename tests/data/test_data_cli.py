from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from opensora_core.cli import app
from opensora_core.config import ConfigError
from opensora_core.curation.config import load_curation_config
from opensora_core.data.synthetic import COLORS, DIRECTIONS, SHAPES, shape_image

runner = CliRunner()


def test_synth_then_curate_through_the_cli(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "syn"), "--videos", "8", "--images", "3",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    listing = json.loads((tmp_path / "syn" / "synthetic.json").read_text())
    videos = [s for s in listing if s["direction"]]
    assert len(videos) == 8 and len(listing) == 11
    assert {s["color"] for s in videos} <= set(COLORS) and len({s["color"] for s in videos}) >= 6
    assert {s["shape"] for s in listing} == set(SHAPES) and {s["direction"] for s in videos} == set(DIRECTIONS)
    assert all((tmp_path / "syn" / s["path"]).with_suffix(".txt").read_text().strip() == s["text"] for s in listing)
    result = runner.invoke(app, ["data", "curate", "--input", str(tmp_path / "syn"), "--out", str(tmp_path / "out"),
                                 "--config", "synthetic", "--no-progress"])
    assert result.exit_code == 0, result.output
    meta = pd.read_csv(tmp_path / "out" / "meta.csv")
    assert len(meta) == 11 and meta["text"].str.match(r"^an? \w+ (square|circle|triangle)").all()
    assert (meta.loc[meta["media"] == "video", "num_frames"] == 16).all()


def test_synth_holds_out_the_evaluation_combinations_and_checks_the_speed(tmp_path):
    from opensora_core.data.synthetic import held_out_combinations

    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "syn"), "--videos", "56", "--images", "0",
                                 "--frames", "10", "--speed", "3.5,5", "--hold-out"])
    assert result.exit_code == 0, result.output
    listing = json.loads((tmp_path / "syn" / "synthetic.json").read_text())
    seen = {(s["color"], s["shape"], s["direction"]) for s in listing}
    assert len(seen) == 56 and not seen & set(held_out_combinations())  # every training combination once
    for bad in ("fast", "5,3.5", "0,1", "1"):
        result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--speed", bad])
        assert result.exit_code == 2 and "--speed" in result.output, result.output


def test_still_images_show_their_shape():
    circle = shape_image(64, 64, "blue", "circle", seed=3)
    square = shape_image(64, 64, "blue", "square", seed=3)
    blue = lambda im: ((im[..., 2] > 150) & (im[..., 0] < 100)).sum()
    assert 0.7 < blue(circle) / blue(square) < 0.85  # pi/4 of the bounding square


def test_config_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenes:\n  treshold: 2\nfilters:\n  max_ocr: 3\n")
    with pytest.raises(ConfigError) as err:
        load_curation_config(bad)
    assert "bad.yaml" in str(err.value) and "did you mean 'threshold'" in str(err.value)
    result = runner.invoke(app, ["data", "curate", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--config", str(bad)])
    assert result.exit_code == 2
    result = runner.invoke(app, ["data", "curate", "--input", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such" in " ".join(result.output.split())


def test_steps_out_of_order_and_a_file_as_synth_out_are_named(tmp_path):
    (tmp_path / "taken").write_text("")
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "taken"), "--videos", "1"])
    assert result.exit_code == 2 and "a file, not a folder" in " ".join(result.output.split())
    assert runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "raw"), "--videos", "1", "--images", "0"]
                         ).exit_code == 0
    for step in ("scene-clips", "scored-clips", "scenes"):  # the old spelling too
        result = runner.invoke(app, ["data", step, "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                                     "--config", "synthetic"])
        message = " ".join(result.output.split())
        assert result.exit_code == 2 and "has not been materialized" in message, (step, message)
        assert "opensora data raw-videos" in message


def test_a_second_run_cannot_publish_into_a_folder_another_run_is_writing(tmp_path):
    from opensora_core.utils.folder_lock import FolderLock

    assert runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "raw"), "--videos", "1", "--images", "0"]
                         ).exit_code == 0
    out = tmp_path / "out"
    with FolderLock(out, "curation: writing the training table"):
        result = runner.invoke(app, ["data", "curate", "--input", str(tmp_path / "raw"), "--out", str(out),
                                     "--config", "synthetic", "--no-progress"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "is in use by another run" in message and "curation" in message, message
    assert not (out / "meta.csv").exists()
    again = runner.invoke(app, ["data", "curate", "--input", str(tmp_path / "raw"), "--out", str(out),
                                "--config", "synthetic", "--no-progress"])
    assert again.exit_code == 0 and (out / "meta.csv").is_file(), again.output

    # What killed runs left is swept by the next run, under each folder's lock.
    from opensora_core.utils.folder_lock import FolderLock

    (partition,) = [p for p in (out / "partitions").iterdir() if p.is_dir()]
    staged = partition / ".clips.k1ll3d.tmp"
    staged.mkdir()
    (staged / "clip.mp4").write_bytes(b"half")
    half_published = [partition / ".scores.ab12cd34.old", partition / ".raw.ab12cd34.new"]
    for folder in half_published:
        folder.mkdir()
    table_tmp, foreign = out / ".meta.csv.x7y8.tmp", out / ".notes.txt.tmp"
    table_tmp.write_text("path,te")
    foreign.write_text("not curation's")
    busy = out / "partitions" / "busy"  # a partition a live run holds keeps its files
    with FolderLock(busy, "curation: writing partitions/busy/clips"):
        (busy / ".clips.live.tmp").mkdir()
        third = runner.invoke(app, ["data", "curate", "--input", str(tmp_path / "raw"), "--out", str(out),
                                    "--config", "synthetic", "--no-progress"])
        assert third.exit_code == 0, third.output
        assert (busy / ".clips.live.tmp").is_dir()
    assert not staged.exists() and not any(p.exists() for p in half_published) and not table_tmp.exists()
    assert foreign.exists()  # only the files the table's writer owns are swept at the top
