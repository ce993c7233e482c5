"""Tasks: what a prediction and a metric are (classification, detection, token classification).

Each task owns its label formats and readers, head, loss, decoding, metric, memory rows and
conformance outputs; the registry that names them lives here.
"""
