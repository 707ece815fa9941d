"""Measuring detectors: the benchmark protocols, the classical baselines, reports of a
saved model on labelled data, and ranking metrics of anomaly scores.
"""
