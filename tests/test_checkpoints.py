import open_clip
import pytest
import torch

import sparo_clip


def _same(a, b, batch):
    images, text = batch
    a.eval(), b.eval()
    torch.testing.assert_close(a.encode_image(images), b.encode_image(images))
    torch.testing.assert_close(a.encode_text(text), b.encode_text(text))


def test_plain_state_dict(tmp_path, test_model, batch):
    path = tmp_path / "plain.pt"
    torch.save(test_model.state_dict(), path)
    m, _, preprocess = open_clip.create_model_and_transforms("test-SPARO", pretrained=str(path))
    _same(test_model, m, batch)


def test_open_clip_train_checkpoint_with_module_prefix(tmp_path, test_model, batch):
    path = tmp_path / "epoch_1.pt"
    sd = {"module." + k: v for k, v in test_model.state_dict().items()}
    torch.save({"epoch": 1, "name": "run", "state_dict": sd, "optimizer": {}}, path)
    m, _, _ = open_clip.create_model_and_transforms("test-SPARO", pretrained=str(path))  # weights_only=True
    _same(test_model, m, batch)


def test_shared_queries_round_trip(tmp_path, batch):
    m = sparo_clip.create_model("test-SPARO", override_config={"sparo_cfg": {"share_queries": True}})
    path = tmp_path / "shared.pt"
    torch.save(m.state_dict(), path)
    m2 = sparo_clip.create_model(
        "test-SPARO", pretrained=str(path), override_config={"sparo_cfg": {"share_queries": True}}
    )
    _same(m, m2, batch)
    assert m2.text_readout.query is m2.image_readout.query


def test_wrong_config_fails_loudly(tmp_path, test_model):
    path = tmp_path / "plain.pt"
    torch.save(test_model.state_dict(), path)
    with pytest.raises(RuntimeError, match="size mismatch|Missing|Unexpected"):
        sparo_clip.create_model(
            "test-SPARO", pretrained=str(path), override_config={"sparo_cfg": {"heads": 2}}
        )


def test_save_pretrained_local_dir(tmp_path, batch):
    m = sparo_clip.create_model(
        "test-SPARO", override_config={"sparo_cfg": {"slot_norm": "sqrtsem:softmax", "share_queries": True}}
    )
    out = sparo_clip.save_pretrained(m, tmp_path / "model")
    assert (out / "open_clip_config.json").is_file() and (out / "open_clip_model.safetensors").is_file()
    m2, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert isinstance(m2, sparo_clip.SparoCLIP)
    assert m2.sparo_cfg == m.sparo_cfg
    _same(m, m2, batch)
    assert open_clip.get_model_preprocess_cfg(m2)["size"] == (32, 32)
    assert open_clip.get_tokenizer(f"local-dir:{out}")(["a"]).shape == (1, 16)


def test_save_pretrained_plain_clip_needs_config(tmp_path):
    base = open_clip.create_model("test-CLIP")
    with pytest.raises(ValueError, match="model_cfg"):
        sparo_clip.save_pretrained(base, tmp_path)
    sparo_clip.save_pretrained(base, tmp_path / "b", model_cfg=open_clip.get_model_config("test-CLIP"))
    m2 = open_clip.create_model(f"local-dir:{tmp_path / 'b'}")
    assert type(m2) is open_clip.CLIP
