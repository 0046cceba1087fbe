"""A work-around for Keras 3's fit under MultiWorkerMirroredStrategy, kept apart so that
it can be deleted in one piece once Keras fixes it upstream.

Upstream: keras-team/keras#20585, "Does Keras 3 work with
tf.distribute.MultiWorkerMirroredStrategy?" (open; TensorFlow's own multi-worker Keras
tutorial fails since TensorFlow 2.16 made Keras 3 its default, tensorflow/tensorflow#72388).
tests/test_distributed.py runs fit without the work-around and fails once a Keras release
no longer needs it: then delete this module and its one call in strategy.py.
TensorFlow and Keras are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

# Keras versions known to need work_around_keras_20585 (multi-worker fit).
KERAS_20585_CHECKED_UP_TO = (3, 15)


def keras_version() -> tuple[int, int]:
    """(major, minor) of the installed Keras."""
    import keras

    return tuple(int(part) for part in keras.__version__.split(".")[:2])


def work_around_keras_20585() -> None:
    """Make Keras 3's fit work under MultiWorkerMirroredStrategy (TensorFlow backend).

    Keras (checked up to KERAS_20585_CHECKED_UP_TO) reduces per-replica values
    with calls that collective all-reduce rejects: the first batch before
    building (eagerly) and scalar metrics with axis=0 (keras-team/keras#20585).
    This replaces two private functions of Keras' TensorFlow trainer: it builds
    from the worker's own first batch and averages scalars over replicas.
    Harmless for other strategies.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tensorflow_trainer

    if getattr(tensorflow_trainer, "_keras_20585_worked_around", False):
        return
    if keras_version() > KERAS_20585_CHECKED_UP_TO:
        print(
            f"note: Keras {'.'.join(map(str, keras_version()))} is newer than the versions "
            "checked for keras-team/keras#20585; applying the multi-worker workaround."
        )
    original_reduce = tensorflow_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return tf.nest.map_structure(
                lambda value: (
                    strategy.reduce("MEAN", value, axis=None)
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value
                ),
                values,
            )
        return original_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: (
                        self.distribute_strategy.experimental_local_results(value)[0]
                        if isinstance(value, tf.distribute.DistributedValues)
                        else value
                    ),
                    next(batches),
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tensorflow_trainer.reduce_per_replica = reduce_per_replica
    tensorflow_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tensorflow_trainer._keras_20585_worked_around = True
