"""The supervised control of the DINO probes (benchmarks.dino_control): it trains with the labels, reads the
encoder as the probes read a teacher, and writes its block into the docs."""

from pathlib import Path

import pytest
from PIL import Image

from benchmarks import dino_control


def _folder(root: Path, per_class: int, seed: int) -> Path:
    """Two classes a classifier tells apart at once: a red and a blue square, at random places."""
    import random

    rng = random.Random(seed)
    for name, colour in (("blue", (40, 60, 220)), ("red", (220, 40, 40))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (32, 32), (30, 30, 30))
            x, y = rng.randrange(0, 22), rng.randrange(0, 22)
            img.paste(colour, (x, y, x + 10, y + 10))
            img.save(root / name / f"{i}.png")
    return root


def test_the_control_trains_with_the_labels_and_reads_the_encoder_like_a_probe(tmp_path):
    train, val = _folder(tmp_path / "train", 16, 0), _folder(tmp_path / "val", 8, 1)
    untrained = dino_control.supervised_probe(train, val, training=dino_control.Training(steps=0))
    trained = dino_control.supervised_probe(train, val, training=dino_control.Training(steps=40, batch=16))
    assert trained["classes"] == 2 and (trained["train_images"], trained["val_images"]) == (32, 16)
    assert untrained["head"] <= 0.75  # a head never trained guesses
    assert trained["head"] == 1.0 and trained["linear"] == 1.0  # trained with the labels, it separates them


def test_the_doc_block_is_filled_with_mean_and_sd_over_seeds(tmp_path):
    row = {"linear": 0.9, "head": 0.95, "classes": 4, "train_images": 80, "val_images": 80, "wd": 0.01}
    result = {"command": "python -m benchmarks.dino_control", "training": {"steps": 10, "batch": 8},
              "seconds": 60.0, "rows": {"0": {"class": row, "shape": row},
                                        "1": {"class": dict(row, linear=0.7), "shape": row}}}  # fmt: skip
    doc = tmp_path / "dino.md"
    doc.write_text(f"before\n{dino_control.BEGIN}\nold\n{dino_control.END}\nafter\n")
    dino_control.write_docs(result, doc)
    text = doc.read_text()
    assert "old" not in text and text.startswith("before") and text.rstrip().endswith("after")
    assert "| colour-shape classes | 4 | 80.0 ± 14.1 | 95.0 ± 0.0 |" in text


@pytest.mark.parametrize("flag", ["--seeds", "--steps", "--threads"])
def test_a_count_below_one_is_refused_in_one_line(flag, capsys):
    with pytest.raises(SystemExit) as e:
        dino_control.main([flag, "0"])
    assert e.value.code == 2 and f"{flag} must be >= 1" in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_unreadable_image_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    caplog.set_level("WARNING")
    train, val = _folder(tmp_path / "train", 8, 0), _folder(tmp_path / "val", 4, 1)
    (train / "red" / "broken.png").write_bytes(b"not a png")
    result = dino_control.supervised_probe(train, val, training=dino_control.Training(steps=2, batch=4))
    assert result["train_images"] == 16  # the 16 readable ones
    assert any("broken.png" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the main job's folder should be
    with pytest.raises(SystemExit) as e:
        dino_control.main(
            ["--seeds", "1", "--out", str(blocker / "runs"), "--json", str(tmp_path / "r.json")]
        )
    err = capsys.readouterr().err.strip()
    assert (
        e.value.code == 2
        and err.splitlines()[-1].startswith("python -m benchmarks.dino_control: error: --out")
        and "is a file" in err
    )
    assert not (tmp_path / "r.json").exists()
