"""Tables in and out: CSV and Parquet files and datasets read in bounded chunks within limits,
outputs written all or nothing, training samples, label columns.
"""
