"""Per-case descriptor files, format ``nnunet-shape/descriptors/v1``, both ways.

``read`` parses and validates a file (``schema_v1.json``) and turns it into training targets;
``export`` measures label maps and writes the files (``nnUNetv2_export_descriptors``, ``cli``).
Nothing is imported here so that loading the schema (package data) stays cheap.
"""
