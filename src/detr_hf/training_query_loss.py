"""Deprecated module name: the extra queries' loss lives in extra_query_loss.py (names re-exported here)."""

from .deprecation import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "denoising_loss": "extra_query_loss.denoising_loss",
        "group_matching_loss": "extra_query_loss.group_matching_loss",
        "training_query_loss": "extra_query_loss.extra_query_loss",
    },
)
