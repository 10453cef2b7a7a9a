"""Training shards read with every sample accounted for (sparo_clip.training.shards, no training)."""

import logging

import pytest

from sparo_clip.training.shards import DataError, PassRules, member_names, probe_shard, shard_samples

from .train_helpers import damage_shard, make_shards, set_captions


def _read(paths, batch_size=1):
    errors = []

    def handler(exn):
        errors.append(exn)
        return True

    samples = list(shard_samples([{"url": str(p)} for p in paths], handler, PassRules(batch_size)))
    return samples, errors


@pytest.mark.parametrize(
    "how, kept, reason",
    [
        (None, 8, None),
        ("random", 0, "invalid header"),
        ("truncate", 0, "256 unreadable bytes after byte 1,024"),
        ("tail", 2, "3,000 unreadable bytes after byte 4,096"),
        ("cut", 2, "no end-of-archive marker after byte 4,096"),
    ],
)
def test_each_kind_of_damage_is_named_and_counted(tmp_path, caplog, how, kept, reason):
    make_shards(tmp_path, num_shards=2, per_shard=8)
    shard = tmp_path / "shard-000.tar"
    if how:
        damage_shard(shard, how)
    with caplog.at_level(logging.WARNING, logger="sparo_clip.training.shards"):
        samples, errors = _read([shard, tmp_path / "shard-001.tar"])
    assert len(samples) == kept + 8
    assert all({"png", "txt", "__key__", "__url__"} <= set(s) for s in samples)
    assert len(errors) == (1 if how else 0)
    if how:
        assert f"shard {shard}: unreadable ({reason}" in caplog.text
        assert f"read {kept} samples, skipped {8 - kept} of its 8 samples (sizes.json)" in caplog.text
    else:
        assert caplog.text == ""


def test_blank_captions_are_skipped_and_counted(tmp_path, caplog):
    make_shards(tmp_path, num_shards=1, per_shard=8)
    set_captions(tmp_path / "shard-000.tar", " \t", count=3)
    with caplog.at_level(logging.WARNING, logger="sparo_clip.training.shards"):
        samples, _ = _read([tmp_path / "shard-000.tar"])
    assert len(samples) == 5
    assert "skipped 3 sample(s) with a blank caption" in caplog.text


def test_a_pass_with_nothing_or_less_than_a_batch_is_an_error(tmp_path):
    make_shards(tmp_path, num_shards=2, per_shard=4)
    with pytest.raises(DataError, match=r"read 8 usable samples from its 2 shard\(s\) .* \(--batch-size 9\)"):
        _read(sorted(tmp_path.glob("*.tar")), batch_size=9)
    assert len(_read(sorted(tmp_path.glob("*.tar")), batch_size=8)[0]) == 8
    for shard in tmp_path.glob("*.tar"):
        damage_shard(shard, "random")
    with pytest.raises(DataError, match=r"^0 of 2 shards readable in "):
        _read(sorted(tmp_path.glob("*.tar")))


def test_probes_read_headers_only(tmp_path):
    make_shards(tmp_path, num_shards=3, per_shard=8)
    damage_shard(tmp_path / "shard-001.tar", "random")
    damage_shard(tmp_path / "shard-002.tar", "truncate")
    assert probe_shard(str(tmp_path / "shard-000.tar")) is None
    assert probe_shard(str(tmp_path / "shard-001.tar")) == "invalid header"
    assert probe_shard(str(tmp_path / "shard-002.tar")) is None  # its first header is fine
    assert member_names(str(tmp_path / "shard-000.tar"), limit=3) == [
        "00000000.png",
        "00000000.txt",
        "00000001.png",
    ]
    assert member_names(str(tmp_path / "shard-002.tar")) is None  # damaged within what was read
    (tmp_path / "empty.tar").write_bytes(b"")
    assert probe_shard(str(tmp_path / "empty.tar")) == "empty file"


def test_a_worker_without_shards_is_an_error_not_a_wait():
    with pytest.raises(DataError, match=r"^no shard reached this worker: there are more data workers"):
        list(shard_samples([], lambda e: True, PassRules(batch_size=1)))


def test_resampled_unreadable_shards_end_after_a_barren_run(tmp_path):
    import itertools

    make_shards(tmp_path, num_shards=1, per_shard=4)
    damage_shard(tmp_path / "shard-000.tar", "truncate")
    endless = ({"url": str(tmp_path / "shard-000.tar")} for _ in itertools.count())  # as --dataset-resampled
    with pytest.raises(DataError, match=r"^5 shards in a row gave this worker no usable sample"):
        list(shard_samples(endless, lambda e: True, PassRules(batch_size=1, max_barren_run=5)))
