"""The stages of the pipelined offline scanner behind `swapwatch scan` (see swapwatch/stream/scan/scanner.py).

decode (one thread) -> faces (detector + tracking + alignment + preprocessing, one or more threads)
-> scoring (batches crops across frames and files, in the consumer's thread) -> one result per file,
in input order. The queues between the stages are bounded, so memory stays flat on long videos.
"""
