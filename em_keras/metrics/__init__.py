"""Scores: pixel accuracies, the ISBI 2012 V_rand / V_info, and the Keras training metrics.

:mod:`~em_keras.metrics.pixel` and :mod:`~em_keras.metrics.isbi` use NumPy and
SciPy only, so evaluation works without TensorFlow;
:mod:`~em_keras.metrics.keras_metrics` holds the Keras metric classes.
"""
