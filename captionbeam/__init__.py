"""captionbeam: distributed batch image captioning on Apache Beam and tf.distribute.

The one import root of the project: ``captionbeam.model`` (TensorFlow/Keras, no Beam),
``captionbeam.pipelines`` (the Beam jobs) and ``captionbeam.launch`` (the command line and the jobs that
compose jobs). The repository keeps them as the top-level folders ``model/``, ``pipelines/`` and
``launch/``; ``setup.py`` maps them under this package.

Importing this package imports nothing else (no TensorFlow, no Beam).
"""
__version__ = "0.2.0"
