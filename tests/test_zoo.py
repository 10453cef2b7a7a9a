"""``sparo-clip list``: every SPARO config with its parameter count next to its twin's."""

from sparo_clip.commands import list_models as zoo
from sparo_clip.commands.cli import main as cli_main
from sparo_clip.models.parity import model_params


def test_list_prints_counts_next_to_the_twins(capsys):
    assert cli_main(["list", "--names", "ViT-B-32-SPARO"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "parameters", "twin", "twin", "parameters", "ratio"]
    name, n, twin, n_twin, ratio = out[1].split()
    assert (name, twin, n_twin) == ("ViT-B-32-SPARO", "ViT-B-32", "151,277,313")  # the paper's budget
    assert n == f"{model_params('ViT-B-32-SPARO'):,}" and float(ratio) <= 1


def test_every_family_is_listed_and_test_configs_have_no_twin():
    rows = {r[0]: r for pattern in ("*SigLIP-SPARO", "convnext*", "test-*") for r in zoo.zoo_rows(pattern)}
    for name in (
        "ViT-B-16-SigLIP-SPARO",
        "convnext_base-SPARO",
        "test-noncausal-SPARO",
        "test-convnext-SPARO",
    ):
        assert name in rows
    assert rows["convnext_base-SPARO"][2] == "convnext_base"
    assert all(r[1] <= r[3] for r in rows.values() if r[3])  # within the twin's parameters
    assert rows["test-convnext-SPARO"][2:] == (None, None)
    table = zoo.format_rows([rows["test-SPARO"]], markdown=True)
    assert table.splitlines()[2] == f"| test-SPARO | {rows['test-SPARO'][1]:,} | - | - | - |"


def test_no_match_is_an_error(capsys):
    assert zoo.main(["--names", "nothing-*"]) == 2
    assert "no SPARO config matches 'nothing-*'" in capsys.readouterr().err
