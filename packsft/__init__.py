"""packsft: pack chat conversations into fixed-length, loss-masked token chunks, offline, once.

The pipeline, one module per stage:

    reader  ->  render  ->  split  ->  pack  ->  chunks  ->  writer     (unit.py, pipeline.py)
    parquet     ids+flags   pieces     rows      arrays      .npy + manifests
                                                    |
                                          loader (PackedLoader), inspect, stats
"""

__version__ = "0.1.0"
FORMAT_VERSION = 1
