"""The detector: encoder + flow + calibrator; its fitting, scoring, calibration, training,
explanations and files.
"""
