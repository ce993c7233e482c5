"""Tasks: what a prediction and a metric are (classification, detection, token classification).

Each task owns its label formats and readers, its head, its loss, the decoding of raw outputs
into predictions, its metric and the rows of its replay memory. Torch-free: may import
``edgetl.core``, ``edgetl.errors`` and ``edgetl.modalities``.
"""
