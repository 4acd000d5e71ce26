"""The command line as a user meets it: bad input gets one line and a non-zero exit;
a folder of DICOM or PNG files trains, evaluates and predicts; Ctrl-C/SIGTERM resumes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biomx.cli import main


def _write_config(path: Path, data: str, extra: str = "") -> Path:
    path.write_text(
        f"name: t\ndata: {data}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 16, progress: false}\n"
        f"eval: {{bootstrap: 100, explain: 2}}\noutput: {{dir: {path.parent / 'runs'}, tensorboard: false}}\n{extra}"
    )
    return path


def _fails(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err and err[-1].startswith("error: ")
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_config_typo_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data: {source: dataset, path: pneumoniamnist}\ntrian: {epochs: 1}\n")
    assert _fails(capsys, ["train", str(cfg)]) == "error: trian: unknown key; did you mean 'train'? " \
        "(allowed: name, data, model, task, train, eval, output, tune)"


def test_negative_learning_rate(tmp_path, capsys):
    cfg = _write_config(tmp_path / "exp.yaml", "{source: dataset, path: pneumoniamnist}")
    line = _fails(capsys, ["train", str(cfg), "--set", "train.optimizer.lr=-0.01"])
    assert line.startswith("error: train.optimizer.lr: Input should be greater than 0 (got -0.01)")


def test_missing_config_file(capsys, tmp_path):
    assert "config file not found" in _fails(capsys, ["train", str(tmp_path / "nope.yaml")])


def test_missing_image_in_manifest_names_file(tmp_path, capsys, png_folder):
    manifest = tmp_path / "manifest.csv"
    rows = (png_folder / "manifest.csv").read_text().splitlines()
    rows.insert(3, "normal/does_not_exist.png,normal,P9")
    manifest.write_text("\n".join(rows) + "\n")
    shutil.copytree(png_folder / "normal", tmp_path / "normal")
    shutil.copytree(png_folder / "pneumonia", tmp_path / "pneumonia")
    cfg = _write_config(tmp_path / "exp.yaml", f"{{source: csv, path: {manifest}, image: {{size: [28, 28]}}}}")
    assert _fails(capsys, ["train", str(cfg)]) == \
        f"error: {tmp_path / 'normal' / 'does_not_exist.png'}: cannot read image: file not found"


def test_label_not_in_classes_names_the_row(tmp_path, capsys, png_folder):
    manifest = tmp_path / "manifest.csv"
    rows = (png_folder / "manifest.csv").read_text().splitlines()
    path, _, patient = rows[5].split(",")
    rows[5] = f"{path},pneumonai,{patient}"
    manifest.write_text("\n".join(rows) + "\n")
    cfg = _write_config(tmp_path / "exp.yaml", f"{{source: csv, path: {png_folder / 'manifest.csv'}, image: {{size: [28, 28]}}}}",
                        "task: {classes: [normal, pneumonia]}\n")
    cfg.write_text(cfg.read_text().replace(str(png_folder / "manifest.csv"), str(manifest)))
    for sub in ("normal", "pneumonia"):
        shutil.copytree(png_folder / sub, tmp_path / sub)
    assert _fails(capsys, ["train", str(cfg)]) == (
        f"error: {manifest}: row 6: label 'pneumonai' is not one of the classes ['normal', 'pneumonia']"
    )


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    cfg = _write_config(tmp_path / "exp.yaml", f"{{source: folder, path: {tmp_path / 'data'}, image: {{size: [28, 28]}}}}")
    assert "no class folders" in _fails(capsys, ["train", str(cfg)])


def test_datasets_lists_each_modality_and_exports_by_name(tmp_path, capsys):
    """`biomx datasets` lists every modality's datasets under its name; `--export` finds the
    modality that has `--name` (default: the first listed); an unknown name is one line."""
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    headers = [line[:-1] for line in lines if not line.startswith(" ")]
    assert headers == ["image", "volume", "sequence", "molecule", "tabular", "history"]
    listed = [line.split(":")[0].strip() for line in lines if line.startswith("  ")]
    assert listed == ["pneumoniamnist", "nuclei2d", "lesions3d", "amp_vs_tm", "solubility", "freesolv", "chembl2147_ki",
                      "breast_cancer", "gbsg2", "whas500", "aids"]  # fmt: skip
    assert main(["datasets", "--export", str(tmp_path / "png"), "--limit", "3"]) == 0
    manifest = tmp_path / "png" / "manifest.csv"
    assert capsys.readouterr().out.strip() == f"wrote pneumoniamnist images and {manifest}"
    assert len(manifest.read_text().splitlines()) == 4
    assert _fails(capsys, ["datasets", "--name", "lesion3d", "--export", str(tmp_path / "x")]) == (
        "error: datasets --name: unknown dataset 'lesion3d'; did you mean 'lesions3d'?; available: "
        "pneumoniamnist, nuclei2d, lesions3d, amp_vs_tm, solubility, freesolv, chembl2147_ki, breast_cancer, gbsg2, whas500, aids")
    assert _fails(capsys, ["datasets", "--export", str(tmp_path / "y"), "--format", "jpg"]) == (
        "error: --format: expected png or dcm, got 'jpg'")
    assert not (tmp_path / "x").exists()


def test_datasets_export_options_need_export_and_name_alone_lists_one(capsys):
    """--format, --limit and --overwrite only say how to export: without --export they are one
    error line (not silently ignored); --name alone lists that dataset, and an unknown one fails."""
    for argv, flags in ([["--limit", "3"], "--limit"], [["--format", "png", "--overwrite"], "--format and --overwrite"]):
        assert _fails(capsys, ["datasets", *argv]) == (
            f"error: datasets {flags}: only with --export DIR (add --export DIR to write the dataset; "
            "listing takes no such option)")
    assert main(["datasets", "--name", "nuclei2d"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == "image:" and lines[1].startswith("  nuclei2d: ")
    assert _fails(capsys, ["datasets", "--name", "nucle2d"]).startswith(
        "error: datasets --name: unknown dataset 'nucle2d'; did you mean 'nuclei2d'?")


def test_validate_lists_every_problem_and_missing_data_paths(tmp_path, capsys):
    """One pass: the schema's problems and a data path that does not exist, one line each."""
    cfg = _write_config(tmp_path / "exp.yaml", "{source: csv, path: nowhere.csv, image: {size: [28, 28]}}")
    missing = f"error: data.path: {tmp_path / 'nowhere.csv'}: no such file or folder"
    assert main(["validate", str(cfg)]) == 1
    assert capsys.readouterr().err.splitlines() == [missing]
    assert main(["validate", str(cfg), "--set", "train.epochs=0", "--set", "train.batch_size=0"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err] == ["train.epochs", "train.batch_size", "data.path"]
    assert err[-1] == missing
    # the cross-section checks too, once the schema holds
    assert main(["validate", str(cfg), "--set", "model.name=resnet19"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: model.name: unknown model 'resnet19'") and err[1] == missing
    (tmp_path / "nowhere.csv").write_text("path,label\n")
    assert main(["validate", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == f"{cfg}: valid"


def test_corrupt_image_fails_then_is_skipped_and_listed(tmp_path, capsys, png_folder):
    data = tmp_path / "data"
    shutil.copytree(png_folder, data)
    victim = sorted((data / "pneumonia").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated mid-stream
    cfg = _write_config(tmp_path / "exp.yaml", f"{{source: folder, path: {data}, image: {{size: [28, 28]}}}}",
                        )  # fmt: skip
    line = _fails(capsys, ["train", str(cfg)])
    assert line.startswith(f"error: {victim}: cannot read image")
    assert main(["train", str(cfg), "--set", "data.on_error=skip", "--set", "output.name=skip"]) == 0
    run = tmp_path / "runs" / "skip"
    skipped = list(csv.DictReader(open(run / "skipped.csv")))
    assert [row["file"] for row in skipped] == [str(victim)]
    assert json.loads((run / "data.json").read_text())["skipped"] == 1
    assert f"skipped: {victim}" in (run / "report.html").read_text()


def test_no_traceback_from_the_real_entry_point(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data: {source: dataset, path: pneumoniamnist}\nmodel: {name: resnet19}\n")
    result = subprocess.run([sys.executable, "-m", "biomx", "train", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: model.name: unknown model 'resnet19' (did you mean 'resnet18'?); run `biomx models` to list them"
    )


def test_models_lists_what_serves_a_modality(capsys):
    assert main(["models", "--modality", "molecule"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:4] == ["name", "modalities:", "tasks", "parameters"]
    assert [row.split()[0] for row in rows] == ["attentive_fp", "dmpnn", "fingerprint_mlp", "gin", "lightgbm", "random_forest", "svm"]
    assert all(row.split()[1:4] == ["molecule:", "classification,", "regression"] for row in rows)
    assert rows[1].split()[4] == "355,202"  # dmpnn at chemprop's sizes
    assert main(["models", "--task", "segmentation", "--in-channels", "2"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [row.split()[:4] for row in rows] == [[name, "image,", "volume:", "segmentation"]
                                                 for name in ("segresnet", "swin_unetr", "unet")]  # fmt: skip
    assert main(["models", "--modality", "sequence", "--task", "segmentation"]) == 0
    assert capsys.readouterr().err.strip() == "no model serves sequence data for segmentation tasks"
    line = _fails(capsys, ["models", "--modality", "molecul"])
    assert line.startswith("error: models --modality: unknown modality 'molecul' (did you mean 'molecule'?); allowed: ")


@pytest.mark.slow
def test_dicom_folder_end_to_end(tmp_path, capsys, dicom_folder):
    """Train from a CSV manifest of DICOM files with a patient-grouped split, evaluate, predict."""
    cfg = _write_config(
        tmp_path / "exp.yaml",
        f"{{source: csv, path: {dicom_folder / 'manifest.csv'}, image: {{size: [32, 32]}}, "
        "split: {method: group, val: 0.2, test: 0.2}}",
    )
    assert main(["train", str(cfg), "--set", "train.epochs=2", "--set", "output.name=dcm"]) == 0
    run = tmp_path / "runs" / "dcm"
    for name in ("config.yaml", "run.json", "split.csv", "data.json", "metrics.jsonl", "test_metrics.json",
                 "predictions_test.csv", "report.html", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    split = list(csv.DictReader(open(run / "split.csv")))
    assert {row["split"] for row in split} == {"train", "val", "test"} and all(len(r["sha256"]) == 64 for r in split)
    assert "patient" not in (run / "split.csv").read_text().lower()  # no patient ids in the run
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n"] == sum(r["split"] == "test" for r in split)
    assert 0.0 <= metrics["metrics"]["auroc"]["ci_low"] <= metrics["metrics"]["auroc"]["value"]

    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr()
    summary = [line for line in (printed.out + printed.err).splitlines() if line.startswith("test (n=")]
    assert summary == [line for line in summary if line.startswith(
        f"test (n={metrics['n']}): auroc {metrics['metrics']['auroc']['value']:.3f}")]  # fmt: skip
    assert len(summary) == 1, printed  # once: evaluate_run prints it, the command does not again

    test_files = [row["id"] for row in split if row["split"] == "test"]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *test_files, "-o", str(out)]) == 0
    predicted = list(csv.DictReader(open(out)))
    reference = {row["id"]: row for row in csv.DictReader(open(run / "predictions_test.csv"))}
    assert len(predicted) == len(test_files)
    for row in predicted:  # the same model on the same files gives the same probabilities
        assert float(row["prob_pneumonia"]) == pytest.approx(float(reference[row["path"]]["prob_pneumonia"]), abs=1e-4)
        assert float(row["prob_normal"]) + float(row["prob_pneumonia"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_sigterm_saves_and_resume_finishes(tmp_path, png_folder):
    cfg = _write_config(tmp_path / "exp.yaml", f"{{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}")
    args = [sys.executable, "-m", "biomx", "train", str(cfg), "--set", "train.epochs=400", "--set", "output.name=sig"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = tmp_path / "runs" / "sig" / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and f"biomx train --resume {tmp_path / 'runs' / 'sig'}" in err
    done = json.loads((tmp_path / "runs" / "sig" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"]
    assert done < 400
    # Resume with a shorter schedule would change the run: resume keeps the saved config.
    result = subprocess.run([sys.executable, "-m", "biomx", "train", "--resume", str(tmp_path / "runs" / "sig"),
                             "--set", "train.epochs=" + str(done + 1)], capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "runs" / "sig" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, done + 2))
    assert (tmp_path / "runs" / "sig" / "report.html").is_file()
