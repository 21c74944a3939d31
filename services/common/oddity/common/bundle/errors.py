"""The one error of the bundle contract, below every module that raises it.

Reason to change: how a bad version folder is reported.
"""


class BundleError(Exception):
    """A version folder that is incomplete, corrupt or contradicts its manifest."""
