"""Image shards: tar (WebDataset layout) and TFRecord files of images, read as a stream and written by
``captionbeam pack``. One module per job:

* :mod:`pipelines.shards.tar`: stream a tar's members grouped into samples (:func:`~.tar.iter_tar`);
* :mod:`pipelines.shards.tfrecord`: TFRecord framing with TensorFlow's masked CRC32C
  (:func:`~.tfrecord.frame_record`, :func:`~.tfrecord.iter_tfrecord_frames`);
* :mod:`pipelines.shards.image_examples`: image ``tf.train.Example``s: field names
  (:class:`~.image_examples.TfrecordFields`), build, parse, and the record stream of a TFRecord shard;
* :mod:`pipelines.shards.read`: any shard (local or ``gs://``) -> :class:`~pipelines.image_items.ShardItem`s;
* :mod:`pipelines.shards.writer`: :class:`~.writer.ShardWriter`, used by :mod:`pipelines.pack`;
* :mod:`pipelines.shards.transforms`: the Beam side, :class:`~.transforms.ReadImageShards`.

The data types they yield live in :mod:`pipelines.image_items`, the format table in :mod:`pipelines.formats`.
This package module imports nothing: import the module you need.
"""
