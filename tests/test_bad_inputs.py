"""A corpus of user mistakes, each run through the real command line (`biomx.cli.main`).

The rule every case checks: a non-zero exit, no Python traceback, one `error:` line (a few
where several problems are listed) naming the file, key or option, and nothing already on
disk changed or added. Nothing here trains: a config that fails validation never runs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from biomx.cli import main

DATA = "data: {source: dataset, path: pneumoniamnist}\n"  # the smallest valid config


@dataclass
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # tmp_path -> the command line (files set up on the way)
    expect: str  # a fragment of the error line (or of one of them)
    lines: int = 1  # error lines at most (several problems are listed one per line)
    marks: list = field(default_factory=list)


def _file(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def config(id: str, text: str, expect: str, *, lines: int = 1, command: str = "validate", marks=()) -> Case:
    """A config file (`{tmp}` stands for the test's folder) given to `biomx validate` (or train)."""
    return Case(id, lambda tmp: [command, str(_file(tmp, "exp.yaml", text.replace("{tmp}", str(tmp))))],
                expect, lines, list(marks))  # fmt: skip


def override(id: str, sets: list[str], expect: str, *, lines: int = 1) -> Case:
    """A valid config with `--set` overrides."""

    def argv(tmp: Path) -> list[str]:
        args = ["validate", str(_file(tmp, "exp.yaml", DATA))]
        for item in sets:
            args += ["--set", item.replace("{tmp}", str(tmp))]
        return args

    return Case(id, argv, expect, lines)


def command(id: str, args: list[str], expect: str, setup: Callable[[Path], None] | None = None) -> Case:
    """Any command line (`{tmp}` stands for the test's folder), after `setup(tmp)`."""

    def argv(tmp: Path) -> list[str]:
        if setup:
            setup(tmp)
        return [a.replace("{tmp}", str(tmp)) for a in args]

    return Case(id, argv, expect)


# billion laughs: 9 levels of 9 aliases, ~400 bytes expanding to 9**9 strings
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)
LONG = "x" * 5000


def _exports(tmp: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        _file(tmp, name, text)


CASES: list[Case] = [
    # ---- config files that are not YAML configs
    command("missing-file", ["validate", "{tmp}/nope.yaml"], "nope.yaml: config file not found"),
    command("folder-as-config", ["validate", "{tmp}/sub"], "sub: config file not found",
            lambda tmp: (tmp / "sub").mkdir()),  # fmt: skip
    command("binary-file", ["validate", "{tmp}/model.pt"], "model.pt: not a text (UTF-8) file",
            lambda tmp: _file(tmp, "model.pt", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02}q\x00" * 20)),
    command("latin1-file", ["validate", "{tmp}/exp.yaml"], "exp.yaml: not a text (UTF-8) file",
            lambda tmp: _file(tmp, "exp.yaml", "name: caf\xe9\n".encode("latin-1"))),  # fmt: skip
    command("nul-bytes", ["validate", "{tmp}/exp.yaml"], "exp.yaml: not a text file",
            lambda tmp: _file(tmp, "exp.yaml", b"name: a\x00b\n")),  # fmt: skip
    config("empty-file", "", "exp.yaml: config file is empty"),
    config("comments-only", "# nothing\n", "exp.yaml: config file is empty"),
    config("top-level-list", "- data\n- train\n", "exp.yaml: expected a mapping of sections"),
    config("top-level-scalar", "just words\n", "exp.yaml: expected a mapping of sections"),
    # ---- YAML syntax
    config("unclosed-bracket", DATA + "train: {epochs: [1, 2\n", "exp.yaml: line 3: invalid YAML"),
    config("tab-indent", DATA + "train:\n\tepochs: 3\n", "exp.yaml: line 3: invalid YAML"),
    config("bad-indent", DATA + "train:\n  epochs: 3\n batch_size: 4\n", "exp.yaml: line 4: invalid YAML"),
    config("python-tag", DATA + "model: !!python/object/apply:os.system ['true']\n", "exp.yaml: line 2: invalid YAML"),
    config("unknown-alias", DATA + "train: *nowhere\n", "exp.yaml: line 2: invalid YAML"),
    config("duplicate-top-key", DATA + "train: {epochs: 2}\ntrain: {epochs: 3}\n",
           "exp.yaml: line 3: duplicate key 'train'"),  # fmt: skip
    config("duplicate-nested-key", DATA + "train:\n  optimizer:\n    lr: 0.1\n    lr: 0.01\n",
           "exp.yaml: line 5: duplicate key 'lr'"),  # fmt: skip
    config("duplicate-flow-key", DATA + "eval: {ci: 0.9, ci: 0.8}\n", "exp.yaml: line 2: duplicate key 'ci'"),
    config("alias-bomb", BOMB, "exp.yaml: YAML aliases expand to more than"),
    config("recursive-alias", DATA + "model: {args: &a {self: *a}}\n", "exp.yaml: a recursive alias"),
    config("huge-value-cut", DATA + f"train: {{precision: {LONG}}}\n", "train.precision: Input should be"),
    config("huge-unknown-key", DATA + f"{LONG[:1000]}: 1\n", "xxx...: unknown key"),
    # ---- top level and data
    config("top-level-typo", DATA + "trian: {epochs: 2}\n", "trian: unknown key; did you mean 'train'?"),
    config("name-with-slash", DATA + "name: ../escape\n", "name: must be a plain name"),
    config("no-data", "train: {epochs: 2}\n", "data: required key is missing"),
    config("data-not-a-mapping", "data: pneumoniamnist\n", "data: Input should be"),
    config("unknown-modality", "data: {modality: audio, source: csv, path: x.csv}\n",
           "data.modality: unknown modality 'audio'"),
    config("source-of-other-modality", "data: {source: fasta, path: x.fa}\n", "source 'fasta' does not hold image data"),
    config("split-val-over-one", "data: {source: dataset, path: pneumoniamnist, split: {val: 1.5}}\n",
           "data.split.val: Input should be less than 1"),  # fmt: skip
    config("split-val-nan", "data: {source: dataset, path: pneumoniamnist, split: {val: .nan}}\n",
           "data.split.val: Input should be a finite number"),  # fmt: skip
    config("split-seed-negative", "data: {source: dataset, path: pneumoniamnist, split: {seed: -1}}\n",
           "data.split.seed: Input should be greater than or equal to 0"),  # fmt: skip
    config("split-method-typo", "data: {source: dataset, path: pneumoniamnist, split: {method: stratifed}}\n",
           "did you mean 'stratified'"),  # fmt: skip
    config("on-error-value", "data: {source: dataset, path: pneumoniamnist, on_error: ignore}\n", "data.on_error"),
    config("num-workers-negative", "data: {source: dataset, path: pneumoniamnist, num_workers: -2}\n",
           "data.num_workers: Input should be greater than or equal to 0"),  # fmt: skip
    config("image-size-zero", "data: {source: dataset, path: pneumoniamnist, image: {size: [0, 28]}}\n",
           "data.image.size.0: Input should be greater than 0"),  # fmt: skip
    config("image-size-huge", "data: {source: dataset, path: pneumoniamnist, image: {size: [100000, 28]}}\n",
           "data.image.size.0: Input should be less than or equal to 4096"),
    config("image-rotate-inf", "data: {source: dataset, path: pneumoniamnist, image: {augment: {rotate: .inf}}}\n",
           "data.image.augment.rotate"),  # fmt: skip
    config("key-of-other-modality", "data: {source: dataset, path: pneumoniamnist, sequence: {length: 5}}\n",
           "data.sequence: unknown key; it belongs to data.modality: sequence"),  # fmt: skip
    # ---- model and task
    config("model-ensemble-zero", DATA + "model: {ensemble: 0}\n", "model.ensemble: Input should be greater than 0"),
    config("model-typo", DATA + "model: {nmae: small_cnn}\n", "model.nmae: unknown key; did you mean 'name'?"),
    config("task-kind-unknown", DATA + "task: {kind: clasification}\n", "task.kind: unknown task 'clasification'"),
    config("task-key-typo", DATA + "task: {kind: classification, label_smoothng: 0.1}\n", "task.label_smoothng"),
    # ---- train
    config("epochs-zero", DATA + "train: {epochs: 0}\n", "train.epochs: Input should be greater than 0"),
    config("epochs-text", DATA + "train: {epochs: ten}\n", "train.epochs: Input should be a valid integer"),
    config("batch-size-negative", DATA + "train: {batch_size: -4}\n", "train.batch_size"),
    config("lr-overflow-inf", DATA + "train: {optimizer: {lr: 1e400}}\n", "train.optimizer.lr: Input should be a finite number"),
    config("lr-yaml-inf", DATA + "train: {optimizer: {lr: .inf}}\n", "train.optimizer.lr: Input should be a finite number"),
    config("lr-nan", DATA + "train: {optimizer: {lr: .nan}}\n", "train.optimizer.lr: Input should be a finite number"),
    config("lr-zero", DATA + "train: {optimizer: {lr: 0}}\n", "train.optimizer.lr: Input should be greater than 0"),
    config("weight-decay-nan", DATA + "train: {optimizer: {weight_decay: .NaN}}\n", "train.optimizer.weight_decay"),
    config("betas-nan", DATA + "train: {optimizer: {betas: [.nan, 0.9]}}\n", "train.optimizer.betas.0"),
    config("optimizer-name", DATA + "train: {optimizer: {name: adamm}}\n", "train.optimizer.name"),
    config("warmup-inf", DATA + "train: {schedule: {warmup_epochs: .inf}}\n", "train.schedule.warmup_epochs"),
    config("gamma-nan", DATA + "train: {schedule: {gamma: .nan}}\n", "train.schedule.gamma"),
    config("grad-clip-minus-inf", DATA + "train: {grad_clip: -.inf}\n", "train.grad_clip"),
    config("seed-negative", DATA + "train: {seed: -1}\n", "train.seed: Input should be greater than or equal to 0"),
    config("seed-too-big", DATA + "train: {seed: 4294967296}\n", "train.seed: Input should be less than or equal to"),
    config("precision-typo", DATA + "train: {precision: fp8}\n", "train.precision"),
    config("device-typo", DATA + "train: {device: gpu}\n", "train.device"),
    config("several-problems", DATA + "train: {epochs: 0, batch_size: 0, seed: -1}\n", "train.", lines=3),
    config("train-fails-validation", DATA + "train: {optimizer: {lr: .nan}}\n", "train.optimizer.lr", command="train"),
    # ---- eval
    config("ci-one", DATA + "eval: {ci: 1.0}\n", "eval.ci: Input should be less than 1"),
    config("bootstrap-negative", DATA + "eval: {bootstrap: -5}\n", "eval.bootstrap"),
    config("mc-dropout-negative", DATA + "eval: {mc_dropout: -1}\n", "eval.mc_dropout"),
    config("eval-moved-key", DATA + "eval: {surface_tolerance_mm: 2}\n", "it is task.surface_tolerance_mm now"),
    # ---- output
    config("output-name-parent", DATA + "output: {name: ../../x}\n", "output.name: must be a plain folder name"),
    config("output-name-absolute", DATA + "output: {name: /tmp/x}\n", "output.name: must be a plain folder name"),
    config("output-name-dotdot", DATA + "output: {name: ..}\n", "output.name: must be a plain folder name"),
    config("output-name-dot", DATA + "output: {name: .}\n", "output.name: must be a plain folder name"),
    config("output-name-empty", DATA + "output: {name: ''}\n", "output.name: must be a plain folder name"),
    config("output-name-backslash", DATA + "output: {name: 'a\\\\b'}\n", "output.name: must be a plain folder name"),
    config("output-dir-is-a-file", DATA + "output: {dir: '{tmp}/exp.yaml'}\n", "output.dir: {tmp}/exp.yaml exists and is not a folder"),
    config("output-dir-name-too-long", DATA + f"output: {{dir: {LONG}}}\n", "output.dir: cannot be used as a folder"),
    config("output-dir-under-a-file", DATA + "output: {dir: '{tmp}/exp.yaml/runs'}\n", "exists and is not a folder"),
    config("output-train-refused", DATA + "output: {name: ../x}\n", "output.name", command="train"),
    # ---- --set overrides
    override("set-no-equals", ["train.epochs"], "--set 'train.epochs': expected KEY=VALUE"),
    override("set-into-a-value", ["data.path.x=1"], "--set 'data.path.x=1': path is a value, not a section"),
    override("set-duplicate-key", ["train={epochs: 1, epochs: 2}"], "line 1: duplicate key 'epochs'"),
    override("set-nan", ["train.optimizer.lr=.nan"], "train.optimizer.lr: Input should be a finite number"),
    override("set-unknown-key", ["train.epoch=3"], "train.epoch: unknown key; did you mean 'epochs'?"),
    override("set-output-name", ["output.name=../up"], "output.name: must be a plain folder name"),
    command("demo-bad-set", ["demo", "--output-dir", "{tmp}/runs", "--set", "train.optimizer.lr=-1"],
            "train.optimizer.lr: Input should be greater than 0"),  # fmt: skip
    # ---- command-line integers (argparse: usage, then one error line, exit 2)
    command("datasets-limit-negative", ["datasets", "--export", "{tmp}/out", "--limit", "-3"], "--limit: must be at least 1"),
    command("datasets-limit-zero", ["datasets", "--export", "{tmp}/out", "--limit", "0"], "--limit: must be at least 1"),
    command("datasets-limit-text", ["datasets", "--export", "{tmp}/out", "--limit", "many"], "--limit: expected a whole number"),
    command("predict-mc-dropout-negative", ["predict", "{tmp}/run", "x.png", "--mc-dropout", "-1"],
            "--mc-dropout: must be at least 0"),  # fmt: skip
    command("models-in-channels-zero", ["models", "--in-channels", "0"], "--in-channels: must be at least 1"),
    command("models-out-dim-negative", ["models", "--out-dim", "-2"], "--out-dim: must be at least 1"),
    # ---- exports never overwrite
    command("export-images-manifest", ["datasets", "--export", "{tmp}/out", "--limit", "3"],
            "out/manifest.csv: already exists", lambda tmp: _exports(tmp, {"out/manifest.csv": "my,own\n"})),
    command("export-images-file", ["datasets", "--export", "{tmp}/out", "--limit", "3"],
            "out/pneumonia/val_00000.png: already exists",
            lambda tmp: _exports(tmp, {"out/pneumonia/val_00000.png": "mine", "out/notes.txt": "keep"})),
    command("export-nuclei", ["datasets", "--name", "nuclei2d", "--export", "{tmp}/n"], "n/dataset.json: already exists",
            lambda tmp: _exports(tmp, {"n/dataset.json": "{}"})),  # fmt: skip
    command("export-lesions", ["datasets", "--name", "lesions3d", "--export", "{tmp}/v"],
            "v/labelsTr/lesion_023.nii.gz: already exists",
            lambda tmp: _exports(tmp, {"v/labelsTr/lesion_023.nii.gz": "mine"})),
    command("export-molecules", ["datasets", "--name", "freesolv", "--export", "{tmp}/m"], "m/freesolv.csv: already exists",
            lambda tmp: _exports(tmp, {"m/freesolv.csv": "id\n"})),  # fmt: skip
    command("export-sequences", ["datasets", "--name", "amp_vs_tm", "--export", "{tmp}/s"],
            "s/amp_vs_tm.csv: already exists", lambda tmp: _exports(tmp, {"s/amp_vs_tm.csv": "id\n"})),
    command("export-onto-a-file", ["datasets", "--export", "{tmp}/f", "--limit", "2"], "f: cannot create the output folder",
            lambda tmp: _exports(tmp, {"f": "a file"})),  # fmt: skip
    command("export-under-a-file", ["datasets", "--name", "nuclei2d", "--export", "{tmp}/f/sub"],
            "cannot create the output folder", lambda tmp: _exports(tmp, {"f": "a file"})),
    command("export-name-too-long", ["datasets", "--export", "{tmp}/" + LONG, "--limit", "1"], "cannot check the output files"),
    command("export-unknown-name", ["datasets", "--name", "nuclei", "--export", "{tmp}/x"], "unknown dataset 'nuclei'"),
]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse: a usage error
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = case.argv(tmp_path)
    before = _tree(tmp_path)
    code, err = _run(argv, capsys)
    assert code not in (0, None), err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert 1 <= len(errors) <= case.lines, err
    assert all(len(line) <= 400 for line in errors), "an error line is not bounded"
    assert any(case.expect.replace("{tmp}", str(tmp_path)) in line for line in errors), err
    assert _tree(tmp_path) == before  # nothing written, nothing already there changed


def test_the_corpus_covers_every_category():
    ids = {c.id for c in CASES}
    assert len(CASES) >= 40 and len(ids) == len(CASES)  # ids are unique


def test_overwrite_replaces_only_what_the_export_writes(tmp_path, capsys):
    _exports(tmp_path, {"out/manifest.csv": "old\n", "out/notes.txt": "keep"})
    assert main(["datasets", "--export", str(tmp_path / "out"), "--limit", "2", "--overwrite"]) == 0
    assert (tmp_path / "out" / "manifest.csv").read_text().startswith("path,label,patient_id")
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep"
    capsys.readouterr()


@pytest.mark.parametrize("content", [BOMB.encode(), b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10])
def test_as_a_user_runs_it(tmp_path, content):
    """The installed entry point, in its own process: one line, exit 1, no traceback."""
    path = _file(tmp_path, "exp.yaml", content)
    done = subprocess.run([sys.executable, "-m", "biomx", "validate", str(path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [line for line in done.stderr.strip().splitlines() if "error:" in line]
    assert len(done.stderr.strip().splitlines()) == 1 and len(done.stderr) < 300, done.stderr
