"""The quickstart's --write-docs time block: the job's own time, and the set-up time when
scripts/quickstart.sh passes it on."""

from __future__ import annotations

from sparo_clip.commands import quickstart_report as qr

SUMMARY = {
    "torch_threads": 1,
    "epochs": 6,
    "seeds": {
        "0": {"runs": {"CLIP": {"seconds": 150.0, "steps": 558}, "SPARO": {"seconds": 120.0, "steps": 558}}}
    },
}


def _doc(tmp_path):
    doc = tmp_path / "quickstart.md"
    doc.write_text(f"a\n{qr.BEGIN}\nold\n{qr.END}\n{qr.MODELS_BEGIN}\nold\n{qr.MODELS_END}\n")
    return doc


def test_time_block_adds_the_set_up_time_scripts_quickstart_passes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(qr, "models_table", lambda summary: "models")
    monkeypatch.setenv(qr.SETUP_ENV, "60")
    doc = _doc(tmp_path)
    qr.write_docs(SUMMARY, 600.0, doc)
    text = doc.read_text()
    assert "600 s (10.0 min) once `.venv` exists" in text
    assert "took 60 s, so `./scripts/quickstart.sh` took 660 s (11.0 min) in all" in text
    assert "120-150 s per run" in text and "old" not in text


def test_time_block_without_a_set_up_time_says_only_what_was_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(qr, "models_table", lambda summary: "models")
    for value in (None, "nan", "-3", "soon"):
        if value is None:
            monkeypatch.delenv(qr.SETUP_ENV, raising=False)
        else:
            monkeypatch.setenv(qr.SETUP_ENV, value)
        doc = _doc(tmp_path)
        qr.write_docs(SUMMARY, 600.0, doc)
        assert "in all" not in doc.read_text() and "once `.venv` exists." in doc.read_text()
