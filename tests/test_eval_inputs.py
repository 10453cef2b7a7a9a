"""Bad input to the evaluation and picture commands: one clear line (or a warning and a finished run), never
a traceback, never code run from a loaded file."""

import json
import logging
import shutil

import open_clip
import pytest
import torch
from PIL import Image

import sparo_clip
from sparo_clip import inputs, viz
from sparo_clip.errors import CheckpointError, UnreadableImage
from sparo_clip.eval import cli, select, zeroshot
from sparo_clip.eval.common import EvalContext
from sparo_clip.eval.folders import image_folder

from .eval_helpers import MODEL, class_folder, noise_image, save_checkpoint, write_csv, write_lines


class Payload:
    """Unpickling this creates ``marker``: the stand-in for code a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "test-SPARO.pt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    class_folder(root / "data", {"cat": 3, "dog": 3})
    write_lines(root / "classnames.txt", ["cat", "dog"])
    write_lines(root / "templates.txt", ["a {c}"])
    return root


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    """Real unreadable files: truncated PNG, text named .png, empty .jpg, and two decompression bombs
    (a 1-bit PNG over PIL's pixel limit, which PIL warns about, and one over twice the limit, which it refuses)."""
    root = tmp_path_factory.mktemp("bad")
    good = noise_image(root / "good.png", 7, size=64).read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notes.png").write_text("not an image\n")
    (root / "empty.jpg").write_bytes(b"")
    pixels = Image.MAX_IMAGE_PIXELS
    Image.new("1", (pixels // 8000 + 1, 8000)).save(root / "bomb_warn.png")
    Image.new("1", (2 * pixels // 8000 + 1, 8000)).save(root / "bomb_error.png")
    (root / "good.png").unlink()
    return sorted(root.iterdir())


def _zeroshot(folder, ckpt, *extra):
    return [
        "zeroshot", "--model", MODEL, "--pretrained", str(ckpt), "--workers", "0", "--batch-size", "4",
        "--data", str(folder / "data"), "--classnames", str(folder / "classnames.txt"),
        "--templates", str(folder / "templates.txt"), *extra,
    ]  # fmt: skip


def _one_line_error(capsys, prefix):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(prefix) and not any("Traceback" in line for line in err), err
    return err[-1]


# ------------------------------------------------------------------------------------------ checkpoints
def test_malicious_checkpoint_runs_no_code(tmp_path, folder, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": open_clip.create_model(MODEL).state_dict(), "x": Payload(marker)}, evil)
    with pytest.raises(Exception):  # noqa: B017 (OpenCLIP's own weights-only load refuses it)
        open_clip.create_model_and_transforms(MODEL, pretrained=str(evil))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        sparo_clip.create_model_and_transforms(MODEL, pretrained=str(evil))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        sparo_clip.create_model(MODEL, pretrained=str(evil))
    assert cli.main(_zeroshot(folder, evil)) == 2
    assert str(evil) in _one_line_error(capsys, "sparo-clip eval zeroshot: error:")
    images, captions = folder / "data" / "cat", write_lines(tmp_path / "c.txt", ["a", "b", "c"])
    argv = ["--model", MODEL, "--pretrained", str(evil), "--images", str(images), "--captions", str(captions)]
    assert viz.main([*argv, "--out", str(tmp_path / "viz")]) == 2
    assert "refusing to unpickle" in _one_line_error(capsys, "sparo-clip viz: error:")
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: a full unpickle does run it
    assert marker.exists()


def _bad_checkpoints(tmp_path, ckpt):
    (tmp_path / "zero.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("this is a text file\n")
    data = ckpt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save(open_clip.create_model("test-CLIP").state_dict(), tmp_path / "clip.pt")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "noweights.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage" * 10)
    return {
        "zero.pt": "empty (0 bytes)",
        "text.pt": "not a readable PyTorch checkpoint",
        "truncated.pt": "not a readable PyTorch checkpoint",
        "clip.pt": "does not fit model test-SPARO: 26 missing, 42 unexpected, 0 with a size mismatch of the model's 46 tensors",
        "noweights.pt": "holds no model weights",
        "missing.pt": "does not exist",
        "garbage.safetensors": "not a readable safetensors file",
    }


def test_bad_checkpoint_files_give_one_clear_line(tmp_path, ckpt, folder, capsys):
    for name, message in _bad_checkpoints(tmp_path, ckpt).items():
        path = tmp_path / name
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
            sparo_clip.create_model_and_transforms(MODEL, pretrained=str(path))
        assert cli.main(_zeroshot(folder, path)) == 2
        line = _one_line_error(capsys, "sparo-clip eval zeroshot: error:")
        assert str(path) in line and message in line.replace("no such file", "does not exist")
    with pytest.raises(CheckpointError) as info:
        sparo_clip.create_model(MODEL, pretrained=str(tmp_path / "clip.pt"))
    line = str(info.value)
    assert "Missing ['image_readout" in line and "Unexpected ['ln_final" in line
    with pytest.raises(
        RuntimeError, match="0 missing, 0 unexpected, 6 with a size mismatch .* size mismatch image_"
    ):
        sparo_clip.create_model(MODEL, pretrained=str(ckpt), override_config={"sparo_cfg": {"heads": 2}})
    model = sparo_clip.create_model(MODEL, pretrained=str(ckpt))  # a good file still loads, exactly
    ref = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_wrong_checkpoint_in_viz_is_one_line(tmp_path, ckpt, folder, capsys):
    images, captions = folder / "data" / "cat", write_lines(tmp_path / "c.txt", ["a", "b", "c"])
    argv = [
        "--model",
        "test-CLIP",
        "--pretrained",
        str(ckpt),
        "--images",
        str(images),
        "--captions",
        str(captions),
    ]
    assert viz.main([*argv, "--out", str(tmp_path / "viz")]) == 2
    line = _one_line_error(capsys, "sparo-clip viz: error:")
    assert f"checkpoint {ckpt} does not fit model test-CLIP" in line


# ------------------------------------------------------------------------------------------ outputs
def test_unwritable_output_fails_before_any_work(tmp_path, ckpt, folder, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("encoding started before --output was checked")

    monkeypatch.setattr(EvalContext, "encode_images", no_work)
    monkeypatch.setattr(zeroshot, "prepare", no_work)  # not even the data folders are scanned
    blocker = write_lines(tmp_path / "file.txt", ["x"])
    assert cli.main([*_zeroshot(folder, ckpt), "--output", str(blocker / "result.json")]) == 2
    assert f"--output {blocker / 'result.json'}: cannot be written" in _one_line_error(capsys, "sparo-clip")
    images, captions = folder / "data" / "cat", write_lines(tmp_path / "c.txt", ["a", "b", "c"])
    argv = ["--model", MODEL, "--images", str(images), "--captions", str(captions)]
    monkeypatch.setattr("sparo_clip.viz.cli.load_model", no_work)
    assert viz.main([*argv, "--out", str(blocker / "viz")]) == 2
    assert "cannot write into this folder" in _one_line_error(capsys, "sparo-clip viz: error:")


# ------------------------------------------------------------------------------------------ images
def test_unreadable_images_are_skipped_and_reported(tmp_path, ckpt, folder, bad_images, capsys):
    data = tmp_path / "zs"
    shutil.copytree(folder, data)
    for i, bad in enumerate(bad_images):
        shutil.copy(bad, data / "data" / ("cat" if i % 2 else "dog") / bad.name)
    out = tmp_path / "r.json"
    assert cli.main([*_zeroshot(data, ckpt), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    skipped = result["skipped_images"]
    assert skipped["count"] == len(bad_images) == 5
    assert sorted(s.split(" cannot be read")[0].rsplit("/", 1)[-1] for s in skipped["files"]) == sorted(
        b.name for b in bad_images
    )
    assert any("decompression bomb" in s for s in skipped["files"] if "bomb_warn" in s)
    clean = tmp_path / "clean.json"
    assert cli.main([*_zeroshot(folder, ckpt), "--output", str(clean)]) == 0
    assert result["metrics"] == json.loads(clean.read_text())["metrics"]  # the good images, scored as before
    assert json.loads(clean.read_text())["skipped_images"] == {"count": 0, "files": []}
    sel = tmp_path / "sel.json"
    assert select.main([*_zeroshot(data, ckpt), "--val-fraction", "0.5", "--output", str(sel)]) == 0
    assert json.loads(sel.read_text())["skipped_images"]["count"] == 5
    capsys.readouterr()
    assert cli.main([*_zeroshot(data, ckpt), "--strict"]) == 2
    line = _one_line_error(capsys, "sparo-clip eval zeroshot: error: image ")
    assert "cannot be read" in line and "--strict" in line and any(b.name in line for b in bad_images)


def test_retrieval_refuses_unreadable_images_naming_them(tmp_path, ckpt, bad_images, capsys):
    noise_image(tmp_path / "a.png", 1)
    shutil.copy(bad_images[-1], tmp_path / bad_images[-1].name)
    csv = write_csv(tmp_path / "pairs.tsv", [("a.png", "a cat"), (bad_images[-1].name, "a dog")])
    assert (
        cli.main(
            ["retrieval", "--model", MODEL, "--pretrained", str(ckpt), "--csv", str(csv), "--workers", "0"]
        )
        == 2
    )
    line = _one_line_error(capsys, "sparo-clip eval retrieval: error:")
    assert bad_images[-1].name in line and "cannot skip images" in line


def test_viz_skips_unreadable_images_with_their_captions(tmp_path, ckpt, folder, bad_images, capsys):
    images = tmp_path / "images"
    shutil.copytree(folder / "data" / "cat", images)
    shutil.copy(bad_images[0], images / f"1b_{bad_images[0].name}")  # sorts between 1.png and 2.png
    captions = write_lines(tmp_path / "c.txt", ["zero", "one", "broken", "two"])
    argv = ["--model", MODEL, "--pretrained", str(ckpt), "--images", str(images), "--captions", str(captions)]
    assert (
        viz.main([*argv, "--out", str(tmp_path / "viz"), "--min-agreement", "-1", "--gallery-slots", "1"])
        == 0
    )
    summary = json.loads((tmp_path / "viz" / "summary.json").read_text())
    assert (
        summary["skipped_images"]["count"] == 1
        and bad_images[0].name in summary["skipped_images"]["files"][0]
    )
    assert len(summary["files"]["pairs"]) == 3
    assert [p["caption"] for p in summary["pairs"]] == ["zero", "one", "two"]
    assert viz.main([*argv, "--out", str(tmp_path / "viz2"), "--strict"]) == 2
    assert bad_images[0].name in _one_line_error(capsys, "sparo-clip viz: error: image ")


def test_read_image_names_the_file_for_each_kind_of_damage(bad_images):
    for path in bad_images:
        with pytest.raises(UnreadableImage, match=path.name):
            inputs.read_image(path)


# ------------------------------------------------------------------------------------------ slots, names
def test_duplicate_class_names_warn(tmp_path, folder, caplog):
    names = write_lines(tmp_path / "names.txt", ["cat", "cat"])
    with caplog.at_level(logging.WARNING, logger="sparo_clip.eval.folders"):
        image_folder(folder / "data", names)
    assert "class name(s) cat appear more than once" in caplog.text


@pytest.mark.parametrize("bad", [[1.5], [1, 1], [], [4], [-1], [0.0, 1.0]])
def test_encoders_reject_bad_slot_selections(test_model, batch, bad):
    images, text = batch
    for encode, x in ((test_model.encode_image, images), (test_model.encode_text, text)):
        with pytest.raises(ValueError, match="slot"):
            encode(x, slots=bad)


def test_encoders_accept_good_slot_selections(test_model, batch):
    images, _ = batch
    a = test_model.encode_image(images, slots=[2, 0])
    b = test_model.encode_image(images, slots=torch.tensor([True, False, True, False]))
    assert torch.allclose(a, b)


@pytest.mark.parametrize(
    "value, message",
    [
        ("1.5", "must be integers"),
        ("1,1", "given more than once"),
        (" , ", "neither a file nor"),
        ("0,4", "out of range"),
        ("[1.5]", "must be integers"),
        ("[true]", "must be integers"),
        ("[]", "empty"),
    ],
)
def test_one_slots_parser_rejects_bad_values(tmp_path, value, message):
    if value.startswith("["):
        path = tmp_path / "sel.json"
        path.write_text(json.dumps({"selected_slots": json.loads(value), "num_slots": 4}))
        value = str(path)
    with pytest.raises(ValueError, match=message):
        inputs.parse_slots(value, num_slots=4)


def test_one_slots_parser_reads_files_for_the_right_model(tmp_path):
    path = tmp_path / "sel.json"
    path.write_text(json.dumps({"selected_slots": [3, 1], "num_slots": 8}))
    assert inputs.parse_slots(str(path)) == [1, 3]  # sorted, whatever the order in the file
    with pytest.raises(ValueError, match="selected for a model with 8 slots; this model has 4"):
        inputs.parse_slots(str(path), num_slots=4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "tpu"], "is not a torch device"),
        (["--model", "test-SPAR0"], "close names: ['test-SPARO'"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--slots", "1.5"], "must be integers"),
        (["--slots", "2,2"], "given more than once"),
        (["--slots", "1,9"], "--slots: indices [9] out of range; this model's slots are 0..3"),
    ],
)
def test_eval_and_viz_bad_options_are_one_line(tmp_path, ckpt, folder, capsys, extra, message):
    assert cli.main([*_zeroshot(folder, ckpt), *extra]) == 2
    assert message in _one_line_error(capsys, "sparo-clip eval zeroshot: error:")
    images, captions = folder / "data" / "cat", write_lines(tmp_path / "c.txt", ["a", "b", "c"])
    argv = ["--model", MODEL, "--pretrained", str(ckpt), "--images", str(images), "--captions", str(captions)]
    assert viz.main([*argv, "--out", str(tmp_path / "viz"), *extra]) == 2
    assert message in _one_line_error(capsys, "sparo-clip viz: error:")


def test_doc_pictures_command_reports_bad_input_in_one_line(tmp_path, folder, capsys):
    from sparo_clip.viz import docs

    (tmp_path / "zero.pt").write_bytes(b"")
    images, captions = folder / "data" / "cat", write_lines(tmp_path / "c.txt", ["a", "b", "c"])
    argv = [
        "--model",
        MODEL,
        "--images",
        str(images),
        "--captions",
        str(captions),
        "--out",
        str(tmp_path / "d"),
    ]
    assert docs.main([*argv, "--pretrained", str(tmp_path / "zero.pt")]) == 2
    assert "is empty (0 bytes)" in _one_line_error(capsys, "sparo-clip viz: error:")
    blocker = write_lines(tmp_path / "file.txt", ["x"])
    argv[-1] = str(blocker / "d")
    assert docs.main([*argv, "--pretrained", str(tmp_path / "zero.pt")]) == 2
    assert "cannot write into this folder" in _one_line_error(capsys, "python -m sparo_clip.viz.docs: error:")
