"""Scoring whole tables: in this process chunk by chunk (:mod:`pipelines.batch.local`, with
Benjamini-Hochberg over the table, :mod:`pipelines.batch.fdr`), or on Spark
(:mod:`pipelines.batch.spark`).
"""
