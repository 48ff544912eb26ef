"""Weak annotation by surface points (paper 003): the point-file format, 3D Slicer import, templates.

``format`` reads, validates and writes ``pointsTr/<case>.json`` (schema ``nnunet-shape/points/v1``,
``schema_v1.json``); ``slicer`` reads and writes 3D Slicer markups (``.mrk.json``); ``templates``
deforms a sphere to the points and rasterises it (VTK). See docs/weak-points.md.
Nothing is imported here so that loading the schema (package data) stays cheap.
"""
