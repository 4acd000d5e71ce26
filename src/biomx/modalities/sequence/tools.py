"""Biology-facing uses of a trained DNA run: variant effects and in-silico mutagenesis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biomx.errors import BiomxError
from biomx.modalities.sequence.encoding import decode, encode, one_hot
from biomx.modalities.sequence.interpret import in_silico_mutagenesis, ism_heatmap_figure
from biomx.modalities.sequence.pipeline import read_inputs
from biomx.modalities.sequence.variants import (
    read_variants,
    score_variants,
    variant_windows,
    write_variant_scores,
)
from biomx.runs import load_run_model, write_csv


def _dna_run(run_dir: str | Path, class_name: str | None) -> tuple[torch.nn.Module, dict, int, str]:
    """The run's model, preprocessing, the logit to explain and its class name."""
    model, info = load_run_model(run_dir)
    pre, task = info["preprocessing"], info["task"]
    if pre.get("modality") != "sequence" or pre.get("alphabet") not in ("dna", "rna"):
        raise BiomxError(f"{run_dir}: not a DNA/RNA sequence model (modality {pre.get('modality')})")
    classes = task["classes"]
    positive = classes[1] if task["kind"] == "binary" else classes[0]
    name = class_name or positive
    if name not in classes:
        raise BiomxError(f"--class: {name!r} is not one of {classes}")
    if task["kind"] == "binary" and name != positive:
        raise BiomxError(f"--class: a binary model explains its positive class {positive!r}")
    return model, pre, 0 if task["kind"] == "binary" else classes.index(name), name


def score_variant_file(
    run_dir: str | Path, variants: str | Path, genome: str | Path, output: str | Path,
    *, class_name: str | None = None,
) -> tuple[int, int]:
    """Predict reference vs alternative allele for every variant; write one CSV row each.

    Reference alleles are checked against the genome; mismatches, unknown contigs and
    symbolic alleles are written with a `problem` and not scored.

    Returns:
        (scored variants, problems).
    """
    model, pre, target, _ = _dna_run(run_dir, class_name)
    kept, skipped = read_variants(variants)
    windows = variant_windows(kept, genome, length=pre["length"])

    def encode_fn(sequences: list[str]) -> torch.Tensor:
        return one_hot(encode(sequences, pre["alphabet"], length=pre["length"])[0], pre["alphabet"])

    rows = score_variants(model, windows, encode_fn=encode_fn, target=target,
                          strand_average=pre["strand_average"])  # fmt: skip
    problems = skipped + windows.problems
    write_variant_scores(rows, problems, output)
    return len(rows), len(problems)


def mutagenesis(
    run_dir: str | Path, inputs: list[str | Path], out_dir: str | Path,
    *, class_name: str | None = None, limit: int = 20,
) -> list[Path]:
    """In-silico mutagenesis of each input sequence: a heatmap PNG and a CSV of effects.

    The effect is the change of the explained logit for each single-base substitution.

    Returns:
        The files written.
    """
    model, pre, target, name = _dna_run(run_dir, class_name)
    x, ids, _ = read_inputs(pre, inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    alphabet = "ACGT" if pre["alphabet"] == "dna" else "ACGU"
    for i in range(min(limit, len(ids))):
        effects = in_silico_mutagenesis(model, x[i : i + 1], target=target)[0].numpy()
        sequence = decode(x[i : i + 1].argmax(1).to(torch.uint8), pre["alphabet"])[0]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in ids[i])[:80]
        fig = ism_heatmap_figure(effects, sequence, title=f"{ids[i]}: substitution effects on {name}")
        png = out / f"{i:03d}_{stem}.png"
        fig.savefig(png, dpi=100)
        table = out / f"{i:03d}_{stem}.csv"
        columns = {"position": list(range(1, effects.shape[1] + 1)), "reference": list(sequence)}
        columns.update({base: np.round(effects[k], 6).tolist() for k, base in enumerate(alphabet)})
        write_csv(table, columns)
        written += [png, table]
    return written
