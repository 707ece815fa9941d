"""Tables as a flow sees them: the schema of a training table, the checks of new records, and
the encoder (numbers, codes and one-hot slots with an exact log-Jacobian). Never imports torch.
"""
