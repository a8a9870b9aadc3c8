"""Exports of the SAM 2 encoder and decoder: ONNX graphs and a Triton model repository.

Needs the ``onnx`` extra (``pip install 'imgembed[onnx]'``: ``onnx``, ``onnxscript``,
``onnxruntime``). Nothing is imported here, so ``import imgembed.export`` stays cheap; the
functions live in :mod:`imgembed.export.onnx_export` (:func:`export_onnx`, :func:`convert_precision`)
and :mod:`imgembed.export.triton_repository` (:func:`export_triton`).
"""
