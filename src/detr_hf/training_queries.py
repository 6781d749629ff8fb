"""Deprecated module name: the training-only extra queries live in extra_queries.py (names re-exported here)."""

from .deprecation import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "TrainingQueries": "extra_queries.ExtraQueries",
        "TrainingQueryLayout": "extra_queries.ExtraQueryLayout",
        "noise_boxes": "extra_queries.noise_boxes",
        "noise_labels": "extra_queries.noise_labels",
        "training_query_mask": "extra_queries.extra_query_mask",
    },
)
