"""`oddity`: the typer application and its commands.

    oddity score readings.csv --model sensors --out scored.parquet
    oddity train sensors --follow
    oddity status | history --since 1h | models | threshold sensors --percentile 99 | rollback sensors
    oddity embed cat.png dog.png | detect-images --model drawings --age 7 drawing.png
    oddity similar library --id img-17 --where "age>=3" | clusters library | tags library --image new.png

A new command is a function in its own module, registered here with `app.command(...)`.

Reason to change: which commands the command line has.
"""

from __future__ import annotations

import typer

from oddity.cli import demo, embedding, score, serving, similarity_commands, training, up
from oddity.cli.endpoints import ENDPOINTS
from oddity.cli.exit_codes import HELP as EXIT_CODES_HELP

ADDRESSES = ", ".join(f"--{name} or {e.target_env} (default {e.default_target})" for name, e in ENDPOINTS.items())

app = typer.Typer(
    name="oddity",
    help="Oddity: anomaly detection served over gRPC — score files, train, inspect and steer models.",
    epilog=(
        f"{EXIT_CODES_HELP} Addresses: {ADDRESSES}; "
        "TLS and tokens: --tls-ca-file, --tls-cert-file, --tls-key-file, --token-file or ODDITY_TLS_CA_FILE, "
        "ODDITY_TLS_CERT_FILE, ODDITY_TLS_KEY_FILE, ODDITY_TOKEN_FILE."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("score", epilog=EXIT_CODES_HELP)(score.score)
app.command("train", epilog=EXIT_CODES_HELP)(training.train)
app.command("status", epilog=EXIT_CODES_HELP)(training.status)
app.command("history", epilog=EXIT_CODES_HELP)(training.history)
app.command("threshold", epilog=EXIT_CODES_HELP)(training.threshold)
app.command("rollback", epilog=EXIT_CODES_HELP)(training.rollback)
app.command("models", epilog=EXIT_CODES_HELP)(serving.models)
app.command("detect-images", epilog=EXIT_CODES_HELP)(serving.detect_images)
app.command("embed", epilog=EXIT_CODES_HELP)(embedding.embed)
app.command("similar", epilog=EXIT_CODES_HELP)(similarity_commands.similar)
app.command("clusters", epilog=EXIT_CODES_HELP)(similarity_commands.clusters)
app.command("tags", epilog=EXIT_CODES_HELP)(similarity_commands.tags)
app.command("up")(up.up)
app.command("demo")(demo.demo)


def main() -> None:
    """The console script."""
    app(prog_name="oddity")


if __name__ == "__main__":
    main()
