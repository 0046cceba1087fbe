"""Distribution: which tf.distribute strategy a training run uses, and which process of
a multi-worker run writes its outputs. No home-made distribution: MirroredStrategy for
several GPUs, MultiWorkerMirroredStrategy when TF_CONFIG names a cluster.
TensorFlow is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import os

from cnn_sentinel.keras_workaround import work_around_keras_20585


def choose_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG is set, MirroredStrategy for
    more than one visible GPU, TensorFlow's default strategy otherwise.

    Call it before any other TensorFlow work: collective ops are configured once.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        work_around_keras_20585()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """Whether this process writes the run's outputs (always true without TF_CONFIG)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
