"""Per-case shape-descriptor export (``nnUNetv2_export_descriptors``).

``descriptor_export.export`` computes and writes the files, ``descriptor_export.cli`` is the
console script, ``schema_v1.json`` is the JSON Schema of the format; reading and validation
live in :mod:`nnunet_shape.descriptor_io`. Nothing is imported here so that loading the
schema (package data) stays cheap.
"""
