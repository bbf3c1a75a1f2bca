"""Exporters: the format registry (``registry``), the converters that make each format
(``convert``), the runtimes that run the files, their validation, metadata and inspection.

Importing the package imports none of them: the config reads only the registry's
table, and a stage's code stamp holds only the modules it really imports.
"""
