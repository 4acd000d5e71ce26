"""The model card of a run (Mitchell et al. 2019, "Model Cards for Model Reporting").

Every run gets `model_card.md` (for people) and `model_card.json` (the same facts for programs),
written at the end of training and of `biomx evaluate`, and again by `biomx card RUN`. The card is
drawn from the run's own files only (run.json, config.yaml, data.json, split.csv counts,
test_metrics.json, and privacy.json, operating_point.json and subgroups.json when the run has
them), so it never names a modality or a task: what only a modality knows (a dataset's licence,
how its inputs were de-identified) comes through the optional `protocols.DescribesData`.

    facts.py     reading the run's files defensively; numbers and nested JSON as rows
    sections.py  the card's sections, each {"key", "title", "text", "facts", "tables"}
    write.py     build, render as Markdown, write both files atomically; the report's link
    cli.py       `biomx card RUN` (argparse only at import: the parser stays light)

This module imports nothing heavy: `biomx.cli` imports `biomx.card.cli` to build its parser.
"""

CARD_MD = "model_card.md"
CARD_JSON = "model_card.json"
