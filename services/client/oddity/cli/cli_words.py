"""The services' hints in the command line's words.

The services speak to API callers: a job skipped on unchanged data says "Train with force",
a threshold override lasts "until SetThreshold(0) clears it", the embedder shows its own
`--models '{...}'` JSON. Where the command line prints such a text for people (errors, notes,
lines, table cells: `oddity.cli.output`), each hint reads as the command or flag that does
it: "run oddity train --force", "oddity threshold --percentile 0", "oddity up --model
NAME=image:PATH". JSON output and the SDK's exceptions and results keep the API's words:
their readers call the API.

Reason to change: a service hint that names an RPC, a request field or a service's flag.
"""

from __future__ import annotations

import re

# API phrase (a regular expression, matched as the services write it) -> the command line's
# words (a replacement template). Specific phrases come before the general ones they contain.
HINTS: tuple[tuple[str, str], ...] = (
    # trainer
    (r"Train with force", "run oddity train --force"),
    (r"SetThreshold\(0\)", "oddity threshold --percentile 0"),
    (r"Train is called \(after_rollback: hold\)", "oddity train is run (after_rollback: hold)"),
    (r"\(or Rollback and Train\)", "(or oddity rollback, then oddity train)"),
    (r"\bdata_path (?=['\"])", "--data-path "),  # before the path it quotes: not a column called data_path
    (r"\bmodel_kind (?=['\"])", "--model-kind "),
    # detector
    (
        r"send extra_features for \['(?P<name>[^'\]]*)'\] \(or one routing value per item\)",
        r"give each file its '\g<name>' with --routing-value (one for every file, or one per file)",
    ),
    (
        r"send extra_features for (?P<names>\[[^\]]*\]) \(or one routing value per item\)",
        r"the model appends \g<names> to each embedding and the command line sends one --routing-value: "
        r"use the SDK's detect_images(extra_features=...)",
    ),
    (
        r"routes rows by '(?P<key>[^']*)': set routing_values \(one per row, or one for all rows\)",
        r"routes rows by '\g<key>': give the table a column '\g<key>'",
    ),
    (r"set explain_top_k to 0", "use --top-features 0"),
    (r"threshold_percentile and explain_top_k do not apply", "--threshold-percentile does not apply"),
    (r"; use Detect\b", "; score its rows with oddity score"),
    (r"\(use Similar\)", "(use oddity similar)"),
    (r"on this detector \(--embedder\)", "on this detector (oddity up --embedder starts one)"),
    # embedder
    (
        r" as its model_id, e\.g\. --models "
        r"'\{\"(?P<name>[^\"]*)\": \{\"model_id\": \"(?P<path>[^\"]*)\", \"modality\": \"(?P<modality>[^\"]*)\"\}\}'",
        r", e.g. oddity up --model \g<name>=\g<modality>:\g<path>",
    ),
    (r"in the model's model_id", "with oddity up --model NAME=PATH"),
)

_COMPILED = tuple((re.compile(api), cli) for api, cli in HINTS)


def in_cli_words(text: str) -> str:
    """`text` with every service hint it holds in the command line's words."""
    for api, cli in _COMPILED:
        text = api.sub(cli, text)
    return text
