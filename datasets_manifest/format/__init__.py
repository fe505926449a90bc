"""The shard-set format: the one definition of what an ImageNet-Texture shard set is.

Everything that writes or reads shards (the pipeline, the trainer, the analyses, ``nsneg-data``)
imports these modules, and they import nothing of the producer or the consumers:

* ``constants`` -- sizes and limits shared by producer and readers (texture and crop size,
  pixel limit, ImageNet normalisation)
* ``naming`` -- the layout: format name and version, member fields, shard/record paths, keys
* ``shard_writer`` -- ``encode_sample``, ``ShardWriter`` (atomic shards + records), ``read_record``
* ``manifest`` -- the manifest: build, schema, validate, load, verify
* ``sample_reader`` -- the sample policy: ``read_tar``, ``check_sample`` and the iterators
* ``skip_log`` -- ``SkipLog``: the bad samples a command met, and its threshold
* ``image_decode`` -- safe decoding of a source image to upright RGB
* ``files`` -- atomic writes, hashing, PNG bytes

See docs/contract.md.
"""
