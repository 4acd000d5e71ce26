"""The sequence modality's own commands: `biomx variants` (VCF effect scores) and `biomx ism`."""

from __future__ import annotations

import argparse

from biomx.argtypes import positive_int


def _cmd_variants(args: argparse.Namespace) -> None:
    from biomx.modalities.sequence.tools import score_variant_file

    scored, problems = score_variant_file(args.run, args.variants, args.genome, args.output,
                                          class_name=args.class_name)  # fmt: skip
    print(f"scored {scored} variants ({problems} not scored, see the problem column) -> {args.output}")


def _cmd_ism(args: argparse.Namespace) -> None:
    from biomx.modalities.sequence.tools import mutagenesis

    written = mutagenesis(args.run, args.inputs, args.output_dir, class_name=args.class_name, limit=args.limit)
    print(f"wrote {len(written) // 2} heatmaps (PNG) and effect tables (CSV) to {args.output_dir}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("variants", help="DNA model: predicted effect of each variant in a VCF (or CSV)")
    p.add_argument("run", help="a trained sequence run folder (runs/<name>)")
    p.add_argument("variants", help="VCF (.vcf/.vcf.gz) or CSV/TSV with chrom,pos,ref,alt[,id]")
    p.add_argument("--genome", required=True, help="genome FASTA (indexed with .fai, or indexed on the fly)")
    p.add_argument("-o", "--output", required=True, help="CSV to write")
    p.add_argument("--class", dest="class_name", help="class whose probability is compared (default: positive)")
    p.set_defaults(func=_cmd_variants)

    p = sub.add_parser("ism", help="DNA model: in-silico mutagenesis heatmaps for sequences (FASTA/CSV)")
    p.add_argument("run", help="a trained sequence run folder (runs/<name>)")
    p.add_argument("inputs", nargs="+", help="FASTA or CSV (sequence column) files")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the heat maps (PNG) and effect tables (CSV), made if missing")
    p.add_argument("--class", dest="class_name", help="class to explain (default: positive)")
    p.add_argument("--limit", type=positive_int, default=20, help="at most this many sequences")
    p.set_defaults(func=_cmd_ism)
