"""Per-case descriptor files, format ``nnunet-shape/descriptors/v1``, both ways.

Modules, lower first (each imports only those above it in this list):

* ``model``   -- constants (``SCHEMA_ID``), the parsed-file classes, the classes of a
  dataset.json, ``DescriptorFileError``, the rule for nnU-Net's layout of a 2-D image;
* ``atomic``  -- atomic text/JSON writes;
* ``read``    -- parse and validate a file or a folder (``schema_v1.json``);
* ``targets`` -- a loaded file -> lower/upper bounds for the trainer;
* ``measure`` -- a label map -> descriptors (a file's JSON object); mask descriptors and the
  volume/centroid errors that ``nnunet-shape evaluate`` also uses;
* ``export``  -- write the files of a folder or dataset, summary.json, descriptors.csv;
* ``cli``     -- ``nnUNetv2_export_descriptors``.

The reading side (``read``, ``targets``) never imports the writing side (``measure``,
``export``). Nothing is imported here so that loading the schema (package data) stays cheap.
"""
