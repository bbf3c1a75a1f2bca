"""The bottom layer: what pipeline, benchmarks and exporters share, importing none of them.

The one Keras (``keras_compat``), atomic file output (``io``), the errors a user can
cause (``errors``), the model contract and its custom layer (``contract``,
``layers``), the one loader of a saved classifier (``loader``), the decoded
splits' storage (``splits``) and the build folder's layout (``layout``).
"""
