"""Scores: pixel accuracies, the ISBI 2012 V_rand / V_info, and the Keras training metrics.

The NumPy scores import no Keras, so evaluation works without TensorFlow.
"""
