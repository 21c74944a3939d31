"""The `oddity` command line: score files, train and follow jobs, read status and history,
move thresholds, roll back, list models, embed and score images. Built on the SDK
(`oddity.client`); `oddity.cli.main.app` is the typer application.

Reason to change: none of its own (the package marker).
"""
