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
from biomx.tasks import task_from_info


def _dna_run(run_dir: str | Path, class_name: str | None) -> tuple[torch.nn.Module, dict, int, float, str]:
    """The run's model, preprocessing, the logit to explain, its sign and its class name.

    The task picks the output: a one-logit model explains its other class by the logit
    negated (sign -1).
    """
    model, info = load_run_model(run_dir)
    pre = info["preprocessing"]
    if pre.get("modality") != "sequence" or pre.get("alphabet") not in ("dna", "rna"):
        raise BiomxError(f"{run_dir}: not a DNA/RNA sequence model (modality {pre.get('modality')})")
    task = task_from_info(info["task"])
    output_for = getattr(task, "output_for", None)
    if output_for is None:
        raise BiomxError(f"{run_dir}: a {task.name} model has no class output to explain")
    try:
        column, sign, name = output_for(class_name)
    except BiomxError as error:
        raise BiomxError(f"{'--class' if class_name is not None else run_dir}: {error}") from None
    return model, pre, column, sign, name


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
    model, pre, target, sign, _ = _dna_run(run_dir, class_name)
    kept, skipped = read_variants(variants)
    windows = variant_windows(kept, genome, length=pre["length"])

    def encode_fn(sequences: list[str]) -> torch.Tensor:
        return one_hot(encode(sequences, pre["alphabet"], length=pre["length"])[0], pre["alphabet"])

    rows = score_variants(model, windows, encode_fn=encode_fn, target=target,
                          strand_average=pre["strand_average"])  # fmt: skip
    if sign < 0:  # the other class of a one-logit model: P = 1 - P(logit's class)
        for row in rows:
            row.update(p_ref=1.0 - row["p_ref"], p_alt=1.0 - row["p_alt"], delta=-row["delta"],
                       log_odds_ratio=-row["log_odds_ratio"])
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
    model, pre, target, sign, name = _dna_run(run_dir, class_name)
    x, ids, _ = read_inputs(pre, inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    alphabet = "ACGT" if pre["alphabet"] == "dna" else "ACGU"
    for i in range(min(limit, len(ids))):
        effects = in_silico_mutagenesis(model, x[i : i + 1], target=target)[0].numpy() * sign + 0.0  # no -0.0
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
