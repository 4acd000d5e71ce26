"""`biomx predict --engine onnx|int8`: the exported graph on the modality's raw inputs gives the
same CSV as the PyTorch models; the refusals (not exported yet, MC dropout, unknown run)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from biomx.cli import main
from biomx.errors import BiomxError
from biomx.export.run_export import export_run
from biomx.predict import predict_files
from servers import train_image_run

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, png_folder) -> Path:
    """A two-member ensemble run, exported as ONNX and int8."""
    run = train_image_run(tmp_path_factory.mktemp("engine"), png_folder, "ens", ensemble=2)
    export_run(run, formats=["onnx", "int8"], echo=lambda line: None)
    return run


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


def test_predict_with_onnx_equals_torch(ensemble, png_folder, tmp_path) -> None:
    files = [png_folder / "normal", png_folder / "pneumonia"]
    assert main(["predict", str(ensemble), *map(str, files), "-o", str(tmp_path / "torch.csv")]) == 0
    assert main(["predict", str(ensemble), *map(str, files), "-o", str(tmp_path / "onnx.csv"),
                 "--engine", "onnx"]) == 0  # fmt: skip
    torch_rows, onnx_rows = rows(tmp_path / "torch.csv"), rows(tmp_path / "onnx.csv")
    assert len(onnx_rows) == len(torch_rows) == 160
    assert list(onnx_rows[0]) == list(torch_rows[0]) == ["path", "prob_normal", "prob_pneumonia", "predicted",
                                                          "prob_pneumonia_std"]  # fmt: skip
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert a["path"] == b["path"] and a["predicted"] == b["predicted"]
        for column in ("prob_pneumonia", "prob_pneumonia_std"):
            assert float(a[column]) == pytest.approx(float(b[column]), abs=1e-4)


def test_predict_with_int8_agrees_on_most_labels(ensemble, png_folder) -> None:
    torch_cols = predict_files(ensemble, [png_folder])
    int8_cols = predict_files(ensemble, [png_folder], engine="int8")
    assert int8_cols["path"] == torch_cols["path"]
    same = sum(a == b for a, b in zip(torch_cols["predicted"], int8_cols["predicted"], strict=True))
    assert same / len(torch_cols["path"]) >= 0.9


def test_engine_refusals_are_one_line(ensemble, tmp_path, png_folder, capsys) -> None:
    with pytest.raises(BiomxError, match="--mc-dropout: the onnx engine runs the exported graph"):
        predict_files(ensemble, [png_folder], engine="onnx", mc_dropout=3)
    with pytest.raises(BiomxError, match="run directory not found"):
        predict_files(tmp_path / "nope", [png_folder], engine="onnx")
    (ensemble / "export" / "model.int8.onnx").rename(tmp_path / "kept.onnx")
    try:
        assert main(["predict", str(ensemble), str(png_folder), "--engine", "int8"]) == 1
    finally:
        (tmp_path / "kept.onnx").rename(ensemble / "export" / "model.int8.onnx")
    err = capsys.readouterr().err
    assert err == f"error: {ensemble / 'export' / 'model.int8.onnx'}: not exported yet; run biomx export {ensemble}\n"


def test_a_task_without_rows_is_refused_before_any_export(tmp_path, png_folder) -> None:
    run = tmp_path / "seg"
    run.mkdir()
    (run / "run.json").write_text('{"task": {"name": "segmentation", "kind": "segmentation", '
                                  '"classes": ["background", "nucleus"], "loss": "dice_ce"}}')  # fmt: skip
    with pytest.raises(BiomxError, match="--engine onnx: a segmentation run predicts with its PyTorch models only"):
        predict_files(run, [png_folder], engine="onnx")
