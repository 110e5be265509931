"""captionbeam.model: everything a training worker or a served model needs. Never imports Beam.

Shared contracts with the pipelines live here: record layouts (``records``), text cleaning
(``text``), the vocabulary file (``vocab``), the encoder registry (``encoders``).
"""
