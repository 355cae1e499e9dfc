"""The sensor's partition planning, as the pure function it calls."""

from opensora_core.curation.ingest import RawFile
from opensora_core.curation.partitions import plan_partitions


def _file(key: str, sidecar: str = "", transient: bool = False) -> RawFile:
    return RawFile(path=f"{key}.mp4", kind="video", size=1, mtime=0.0, sha256="x", key=key, sidecar=sidecar,
                   transient=transient)


def test_new_gone_and_recaptioned_files():
    files = [_file("a"), _file("b", sidecar="b.txt 10"), _file("c")]
    plan = plan_partitions(files, {"a", "b", "old"}, {"a": "", "b": "b.txt 9"}, "s1", "s1")
    assert plan.new == ["c"] and plan.gone == ["old"] and [f.key for f in plan.recaptioned] == ["b"]
    assert plan.rescored == [] and plan.kept_back is None and not plan.empty


def test_changed_scorers_rescore_every_known_file_but_the_first_look_only_notes_them():
    files = [_file("a"), _file("b", sidecar="new"), _file("c")]
    plan = plan_partitions(files, {"a", "b"}, {"b": "old"}, "s2", "s1")
    assert [f.key for f in plan.rescored] == ["a"]  # b is curated again for its caption anyway, c is new
    assert plan_partitions(files, {"a", "b", "c"}, {}, "s2", None).empty


def test_a_transient_read_problem_keeps_partitions_that_look_gone():
    plan = plan_partitions([_file("a", transient=True)], {"a", "b"}, {}, "s", "s")
    assert plan.gone == [] and "not removing 1 partitions while 1 raw files could not be read" in plan.kept_back
    assert plan.empty
